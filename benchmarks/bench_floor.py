"""The floor: the least work a full cache-hit rerun of 1M rows can cost here, next to orca's own.

Run: ``python benchmarks/bench_floor.py [--rows 1000000] [--rounds 3] [--reader dataset]``.

Workload W1 (as in ``bench_cached_pod.py``): tag ``id`` int64, packet ``x`` float64 and ``y``
int64, output ``z = x * 2 + y``. Three scenarios, interleaved (floor, cached, pipeline, floor,
...), each in a fresh process, on stores built once (first runs, also in fresh processes) in a
temp folder:

* ``floor`` -- no orca: against a Delta table of ``key`` (binary, the 16-byte xxh3-128 digest
  of the row's packet) and ``z``, written once beforehand with ``deltalake`` (one commit), the
  child times these parts, and their total as ``seconds``:

  - ``encode_s``: the packet columns of every row laid into one ``(n, 16)`` numpy buffer (``x``
    as little-endian f64 bits, ``y`` as little-endian i64; no names or types, unlike orca's
    canonical encoding, so fewer bytes to hash);
  - ``hash_s``: xxh3-128 of every 16-byte row in native code, as ``UInt128`` keys. The
    ``xxhash`` package has no batch API (one Python call per row is not allowed here), so this
    is the polars-hash plugin, the vectorised xxh3-128 orca itself uses;
  - ``read_s``: the stored ``key`` and ``z`` columns (``--reader``: ``dataset`` =
    ``DeltaTable.to_pyarrow_dataset().to_table``, the default, at least as fast as the others
    in trials here; ``table`` = ``DeltaTable.to_pyarrow_table``; ``polars`` = ``pl.read_delta``);
  - ``keys_s``: the stored digests reinterpreted as big-endian ``UInt128`` (``bin.reinterpret``;
    faster to join on than the binary column, or than two u64 halves);
  - ``join_s``: one order-keeping left join of the input keys on the stored ones (as orca's
    engine does); its unmatched rows are the anti-join, the rows to compute (none here);
  - ``output_s``: the output frame, tags + ``z``, for all rows, in input order.

  Off the clock, as in ``bench_cached_pod.py``: building the input (``source_s``), the one-time
  costs of a process (``warmup_s``: importing deltalake, pyarrow.dataset and polars-hash, and
  loading the plugin with a 1-row hash; orca's scenarios pay these inside their clock wherever
  they first meet them), and the checks after the clock stops (no misses, ``z`` right in every
  row, digests equal to ``xxhash.xxh3_128_digest`` of sample rows).
* ``cached`` -- ``bench_cached_pod.py --one ROWS 0 STORE``: orca's cached pod, full cache-hit rerun.
* ``pipeline`` -- ``bench_pipeline.py --child rerun STORE ROWS``: the two-node pipeline
  (``z = x * 2 + y`` then ``w = z + 1``), full cache-hit rerun, last node read as one Arrow table.

Each line printed for a run is a JSON object with ``scenario`` and ``seconds`` (readable by
``interleave.py``); the summary after them (min / median / max per scenario, ratios to the
floor's median and min) is plain text. ``--scenarios floor,cached`` runs a subset (and builds
only its stores). Targets: cached-pod rerun <= 1.5x the floor, two-node
pipeline rerun <= 2x the floor.

The parent imports nothing heavy and builds nothing: on Linux a child started by ``subprocess``
inherits its parent's peak RSS in ``ru_maxrss`` (it is kept across ``exec``), so the stores are
built by children too and every ``peak_rss_mb`` is the child's own.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

SELF = os.path.abspath(__file__)
HERE = os.path.dirname(SELF)
TARGETS = {"cached": 1.5, "pipeline": 2.0}  # rerun seconds / floor seconds, at most


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def w1(rows: int):
    """The input of ``bench_cached_pod.source(rows, 0)``, as a pyarrow table."""
    import numpy as np
    import pyarrow as pa

    ids = np.arange(rows, dtype=np.int64)
    x = np.random.default_rng(0).random(rows)
    y = np.random.default_rng(1).integers(0, 1000, rows, dtype=np.int64)
    return pa.table({"id": ids, "x": x, "y": y})


def encode(table):
    """Every row's packet (x, y) as 16 bytes: one ``(n, 2)`` little-endian u64 buffer."""
    import numpy as np

    rows = np.empty((table.num_rows, 2), "<u8")
    rows[:, 0] = table.column("x").to_numpy().view("<u8")
    rows[:, 1] = table.column("y").to_numpy().view("<u8")
    return rows


def hash_rows(rows):
    """xxh3-128 (seed 0) of each 16-byte row, as ``UInt128`` (the digest read big-endian)."""
    import polars as pl
    import polars_hash as plh
    import pyarrow as pa

    n = len(rows)
    fixed = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(rows)])
    frame = pl.from_arrow(fixed).to_frame("b")
    return frame.select(plh.col("b").nchash.xxh3_128().alias("key")).to_series()


def keys_to_digests(keys):
    """The inverse: ``UInt128`` keys as ``(n, 16)`` big-endian digest bytes (setup only)."""
    import numpy as np
    import polars as pl

    two64 = pl.lit(2**64, dtype=pl.UInt128)
    parts = keys.to_frame("k").select((pl.col("k") // two64).cast(pl.UInt64).alias("hi"),
                                      (pl.col("k") % two64).cast(pl.UInt64).alias("lo"))
    words = np.empty((len(keys), 2), ">u8")
    words[:, 0], words[:, 1] = parts["hi"].to_numpy(), parts["lo"].to_numpy()
    return words.view(np.uint8).reshape(len(keys), 16)


def setup_floor(rows: int, path: str) -> dict:
    """Write the floor's store: a Delta table of (key binary 16 bytes, z float64), once."""
    import deltalake
    import pyarrow as pa

    start = time.perf_counter()
    table = w1(rows)
    digests = keys_to_digests(hash_rows(encode(table)))
    key = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), rows, [None, pa.py_buffer(digests)])
    key = key.cast(pa.binary())  # Delta has no fixed-size binary
    z = table.column("x").to_numpy() * 2 + table.column("y").to_numpy()
    deltalake.write_deltalake(path, pa.table({"key": key, "z": z}))
    return {"scenario": "setup-floor", "rows": rows, "seconds": round(time.perf_counter() - start, 3)}


def read_store(path: str, reader: str):
    """The stored ``key`` (binary) and ``z`` columns as a polars DataFrame."""
    import deltalake
    import polars as pl

    if reader == "polars":
        return pl.read_delta(path, columns=["key", "z"])
    if reader == "dataset":
        table = deltalake.DeltaTable(path).to_pyarrow_dataset().to_table(columns=["key", "z"])
    else:
        table = deltalake.DeltaTable(path).to_pyarrow_table(columns=["key", "z"])
    return pl.from_arrow(table)


def floor(rows: int, path: str, reader: str) -> dict:
    start = time.perf_counter()  # one-time costs of a process, off the clock: imports, plugin load
    import deltalake  # noqa: F401
    import numpy as np
    import polars as pl
    import pyarrow.dataset  # noqa: F401  (to_pyarrow_dataset imports it)
    import xxhash

    hash_rows(np.zeros((1, 2), "<u8"))
    warmup_s = time.perf_counter() - start

    start = time.perf_counter()
    table = w1(rows)
    source_s = time.perf_counter() - start

    parts, clock = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        parts[name] = now - clock
        clock = now

    packed = encode(table)
    lap("encode_s")
    keys = hash_rows(packed)
    lap("hash_s")
    stored = read_store(path, reader)
    lap("read_s")
    stored = stored.with_columns(pl.col("key").bin.reinterpret(dtype=pl.UInt128, endianness="big"))
    lap("keys_s")
    inputs = pl.DataFrame({"id": pl.from_arrow(table.column("id")), "key": keys})
    joined = inputs.join(stored, on="key", how="left", maintain_order="left")
    misses = joined["z"].null_count()  # the anti-join: rows with no stored result
    lap("join_s")
    out = joined.select("id", "z")
    lap("output_s")
    seconds = sum(parts.values())

    # checks, off the clock
    assert misses == 0 and out.height == rows, (misses, out.height)
    x, y = table.column("x").to_numpy(), table.column("y").to_numpy()
    assert np.array_equal(out["z"].to_numpy(), x * 2 + y)
    assert np.array_equal(out["id"].to_numpy(), table.column("id").to_numpy())
    sample = np.unique(np.linspace(0, rows - 1, 5).astype(np.int64))
    digests = keys_to_digests(keys[sample])
    for i, d in zip(sample, digests, strict=True):
        assert d.tobytes() == xxhash.xxh3_128_digest(packed[i].tobytes()), i

    return {"scenario": "floor", "rows": rows, "seconds": round(seconds, 4),
            **{k: round(v, 4) for k, v in parts.items()}, "reader": reader,
            "warmup_s": round(warmup_s, 3), "source_s": round(source_s, 3),
            "rows_per_s": round(rows / seconds), "peak_rss_mb": round(peak_rss_mb())}


def child(command: list[str]) -> dict:
    done = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=HERE)
    if done.returncode:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"child failed: {' '.join(command)}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_scenario(name: str, rows: int, stores: dict[str, str], reader: str) -> dict:
    if name == "floor":
        return child([SELF, "--child", "floor", str(rows), stores["floor"], "--reader", reader])
    if name == "cached":
        r = child([os.path.join(HERE, "bench_cached_pod.py"), "--one", str(rows), "0",
                   stores["cached"]])
    else:
        r = child([os.path.join(HERE, "bench_pipeline.py"), "--child", "rerun", stores["pipeline"],
                   str(rows)])
        r.pop("scenario", None)
    r = {"scenario": name, **r}
    r["seconds"] = round(r["seconds"], 4)
    return r


def setup(rows: int, root: str, names: list[str]) -> dict[str, str]:
    """Build each scenario's store once, each in a fresh process (orca's by its first run)."""
    stores = {name: os.path.join(root, name) for name in names}
    for name in names:
        if name == "floor":
            first = child([SELF, "--child", "setup", str(rows), stores["floor"]])
        elif name == "cached":
            first = child([os.path.join(HERE, "bench_cached_pod.py"), "--one", str(rows), "0",
                           stores["cached"]])
        else:
            first = child([os.path.join(HERE, "bench_pipeline.py"), "--child", "first",
                           stores["pipeline"], str(rows)])
        first = {**first, "scenario": f"setup-{name}", "seconds": round(first["seconds"], 4)}
        print(json.dumps(first), flush=True)
    return stores


def summarise(seconds: dict[str, list[float]]) -> None:
    print("scenario   min      median   max      (n)")
    for name, values in seconds.items():
        print(f"{name:9} {min(values):7.3f}  {statistics.median(values):7.3f}  {max(values):7.3f}  "
              f"({len(values)})")
    base = statistics.median(seconds["floor"])
    for name, target in TARGETS.items():
        if name not in seconds:
            continue
        ratio = statistics.median(seconds[name]) / base
        best = min(seconds[name]) / min(seconds["floor"])
        verdict = "ok" if ratio <= target else "OVER"
        print(f"{name}/floor: {ratio:.2f}x (medians; mins {best:.2f}x)  target <= {target}x  "
              f"{verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reader", choices=["dataset", "table", "polars"], default="dataset")
    parser.add_argument("--scenarios", default="floor,cached,pipeline",
                        help="comma-separated subset of floor,cached,pipeline")
    parser.add_argument("--child", nargs=3, metavar=("WHAT", "ROWS", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, rows, path = args.child
        if what == "setup":
            result = setup_floor(int(rows), path)
        else:
            result = floor(int(rows), path, args.reader)
        print(json.dumps(result))
        return
    names = [s for s in args.scenarios.split(",") if s]
    unknown = set(names) - {"floor", "cached", "pipeline"}
    if unknown or "floor" not in names:
        parser.error(f"--scenarios must include floor and name only floor, cached, pipeline "
                     f"(got {args.scenarios})")
    seconds: dict[str, list[float]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="orca-floor-") as root:
        stores = setup(args.rows, root, names)
        for _ in range(args.rounds):
            for name in names:
                r = run_scenario(name, args.rows, stores, args.reader)
                seconds[name].append(r["seconds"])
                print(json.dumps(r), flush=True)
    summarise(seconds)


if __name__ == "__main__":
    main()
