"""A rerun over many unchanged small files, in a fresh process: does the file-hash memo hold?

Run: ``python benchmarks/bench_sources.py [--files 100000] [--rounds 3] [--profile rerun]``
(``--profile``: one more child of that scenario under cProfile, not in the summaries).

Setup (untimed, once): ``--files`` files of ~100 bytes, each with its own content, in folders
of 1,000 (``d0000/f000000.txt`` ...) in a temp folder; a one-node pipeline on a Delta store,
``nbytes`` (the length of the file's bytes) over ``GlobSource("<tmp>/{folder}/{name}.txt")``.

Scenarios, each in a new process (``seconds``: building the ``GlobSource`` -- the glob -- plus
``pipeline.run``; ``import orca`` is not counted):

* ``first``   -- the first run: hash every file, compute, record ``sources/<id>``;
* ``rerun``   -- nothing changed: the memo loaded from ``sources/<id>`` means files are only
  stat'ed, not read (``--rounds`` times);
* ``rehash``  -- the same rerun with ``run(rehash_files=True)``, which forgets the memo and
  reads every file again (``--rounds`` times);
* ``touch``   -- before each round, 1 % of the files (a different 1 % each round) get a new
  mtime but keep their content: only they should be read again, and nothing computed;
* ``rerun_after_touch`` -- one more plain rerun after the touch rounds: every touched file has
  been re-hashed by a run since, so it should read none.

``files_hashed`` counts the files whose bytes orca's file hashing read in the child: calls of
``orca.hashing._file_digest`` that found no memo entry with the file's current size and mtime
(the memo is that function's dict; the wrapper checks it just before the call). As a check
independent of orca's internals, ``data_opens`` counts ``open()`` calls on files under the
data folder, by anyone in the child (hashing, and on ``first`` also the pod reading each file),
and ``read_syscalls`` / ``read_mb`` are the child's ``syscr`` / ``rchar`` deltas from
``/proc/self/io`` over the timed part (every read syscall, the Delta store's included).

The files were just written, so they are in the page cache: ``rehash`` reads them from memory
(~1.6 s for 100,000 opens and reads here), its best case; on a cold cache or with large files
the memo is worth far more than ``rerun`` vs ``rehash`` shows.

Targets at 100,000 files: ``files_hashed`` 0 on ``rerun`` and ``rerun_after_touch``, 1,000 on
each ``touch`` round; rerun <= 5 s (a stat of every file costs ~0.3 s, the glob ~2 s).

Measured at 100,000 files (2-core development machine, busy): rerun 4.0 / 4.4 / 4.9 s (min /
median / max), rehash 7.7 s, touch 4.5-5.2 s hashing 1,000 files each round, rerun_after_touch
hashing none -- against 20.1 / 20.3 / 22.4 s, 24 s and 21 s before paths were resolved with one
``lstat`` each (``Path.resolve`` ran 5 times per file and run), and 1,000 -> 2,000 -> 3,000
files re-hashed over the touch rounds before a touched file's new mtime was recorded.
"""

from __future__ import annotations

import argparse
import builtins
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import orca

PER_FOLDER = 1_000


@orca.function_pod(output_keys="nbytes")
def nbytes(path: pathlib.Path) -> int:
    with open(path, "rb") as f:
        return len(f.read())


def file_name(root: str, i: int) -> str:
    return os.path.join(root, f"d{i // PER_FOLDER:04d}", f"f{i:06d}.txt")


def make_files(root: str, n: int) -> None:
    for i in range(n):
        if i % PER_FOLDER == 0:
            os.makedirs(os.path.dirname(file_name(root, i)))
        line = f"file {i:06d} "
        with open(file_name(root, i), "w") as f:
            f.write(line + "x" * (99 - len(line)) + "\n")  # 100 bytes, content unique per file


def touch(root: str, n: int, round_: int) -> int:
    """New mtime (content kept) for 1 % of the files: those with index % 100 == round_."""
    touched = 0
    for i in range(round_ % 100, n, 100):
        path = file_name(root, i)
        st = os.stat(path)
        later = st.st_mtime_ns + (round_ + 1) * 1_000_000_000
        os.utime(path, ns=(later, later))
        touched += 1
    return touched


def proc_io() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(":") for line in f)}


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_reads(root: str) -> tuple[set, list]:
    """Wrap file hashing and open() in this process: (files hashed, opens of data files)."""
    import orca.hashing as hashing

    hashed: set = set()
    opens: list = []
    digest, memo = getattr(hashing, "_file_digest", None), getattr(hashing, "_FILE_DIGESTS", None)
    if digest is not None and memo is not None:
        def counting_digest(path, st):
            known = memo.get(path)
            if known is None or tuple(known[:2]) != (st.st_size, st.st_mtime_ns):
                hashed.add(path)
            return digest(path, st)
        hashing._file_digest = counting_digest
    else:
        hashed.add(None)  # the internals moved: report files_hashed as unknown
    real_open, prefix = builtins.open, os.path.realpath(root) + os.sep

    def counting_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.path.realpath(os.fspath(file)).startswith(prefix):
            opens.append(file)
        return real_open(file, *args, **kwargs)
    builtins.open = counting_open
    return hashed, opens


def scenario(name: str, root: str, store_path: str, profile: bool) -> dict:
    hashed, opens = count_reads(root)
    io_before = proc_io()
    start = time.perf_counter()
    if profile:
        import cProfile
        profiler = cProfile.Profile()
        profiler.enable()
    source = orca.GlobSource(os.path.join(root, "{folder}", "{name}.txt"), source_id="files")
    globbed = time.perf_counter()
    pipeline = orca.Pipeline("sources", store=orca.DeltaStore(store_path))
    with pipeline:
        nbytes.pod(source)
    result = pipeline.run(progress=False, rehash_files=(name == "rehash"))
    if profile:
        profiler.disable()
    elapsed = time.perf_counter() - start
    io_after = proc_io()
    if profile:
        import io
        import pstats
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
        print(out.getvalue(), file=sys.stderr)
    counts = result.counts["nbytes"]
    assert result.status == "succeeded", result.status
    assert counts.cached + counts.computed == len(source), (counts, len(source))
    return {"scenario": name, "files": len(source), "seconds": round(elapsed, 3),
            "glob_s": round(globbed - start, 3), "run_s": round(elapsed - (globbed - start), 3),
            "files_hashed": None if None in hashed else len(hashed), "data_opens": len(opens),
            "computed": counts.computed,
            "read_syscalls": io_after["syscr"] - io_before["syscr"],
            "read_mb": round((io_after["rchar"] - io_before["rchar"]) / 2**20, 1),
            "peak_rss_mb": round(peak_rss_mb())}


def run_fresh(name: str, root: str, store_path: str, profile: bool = False) -> dict:
    command = [sys.executable, __file__, "--child", name, root, store_path] + (["--profile", name] if profile else [])
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"child {name!r} failed:\n{out.stderr}")
    if profile:
        print(out.stderr, file=sys.stderr)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    if profile:
        report["profiled"] = True
    print(json.dumps(report), flush=True)
    return report


def summary(name: str, reports: list[dict]) -> None:
    seconds = [r["seconds"] for r in reports]
    print(json.dumps({"scenario": name, "rounds": len(seconds), "min": min(seconds),
                      "median": round(statistics.median(seconds), 3), "max": max(seconds),
                      "files_hashed": [r["files_hashed"] for r in reports],
                      "peak_rss_mb": max(r["peak_rss_mb"] for r in reports)}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", choices=["first", "rerun", "rehash"],
                        help="then run this scenario once more under cProfile: top 40 by cumulative time on stderr")
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        name, root, store_path = args.child
        print(json.dumps(scenario(name, root, store_path, args.profile == name)))
        return
    with tempfile.TemporaryDirectory(prefix="orca-sources-") as tmp:
        root, store = os.path.join(tmp, "data"), os.path.join(tmp, "store")
        start = time.perf_counter()
        make_files(root, args.files)
        print(json.dumps({"setup": "files", "files": args.files, "seconds": round(time.perf_counter() - start, 3)}),
              flush=True)
        run_fresh("first", root, store)
        for name in ("rerun", "rehash"):
            summary(name, [run_fresh(name, root, store) for _ in range(args.rounds)])
        if args.profile:  # one more child, under cProfile (its figures are not in the summaries)
            run_fresh(args.profile, root, store if args.profile != "first" else store + "-profiled", profile=True)
        touches = []
        for i in range(args.rounds):
            print(json.dumps({"setup": "touch", "round": i, "touched": touch(root, args.files, i)}), flush=True)
            touches.append(run_fresh("touch", root, store))
        summary("touch", touches)
        run_fresh("rerun_after_touch", root, store)


if __name__ == "__main__":
    main()
