"""`RayExecutor` on a real multi-node Ray cluster on this machine.

The cluster is a head and four worker nodes, each a separate ``ray start --block`` (its own
raylet and object store) on its own loopback address (127.0.0.2-6), so every byte stays on
this machine while tasks, objects and node failures cross real node boundaries. The head
has no CPUs: every task runs on a worker node and every chunk crosses from the driver's
object store to another node's.

Only processes this module started are ever stopped (each ``ray start`` runs in a session
of its own and teardown kills exactly the processes of those sessions); ``ray stop`` would
stop every Ray on the machine and is never used.
"""

from __future__ import annotations

import ctypes
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib

import cloudpickle
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import orca
from orca.errors import ExecutorError
from orca.executors import RayExecutor

ray = pytest.importorskip("ray")

pytestmark = pytest.mark.slow

# Workers cannot import this module by name (pytest imports it by path): ship its functions
# by value, as a notebook's would be.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

# Two of the worker nodes are killed by the tests below, one each; all start together.
HEAD, WORKERS = "127.0.0.2", ("127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6")
START_TIMEOUT = 40.0  # seconds for one node to come up
MB = 1_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _sessions_processes(sids: set[int]) -> list[int]:
    """Live processes whose session id is in ``sids`` (from /proc; zombies left out)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[3]) in sids:
                found.append(int(entry.name))
    return found


def _terminate_with_parent() -> None:
    """In the child: get SIGTERM when this test process dies, even by SIGKILL (which skips
    the fixture's teardown); ``ray start --block`` then stops the processes it started."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


class LocalCluster:
    """A Ray cluster of separate raylets on loopback addresses, owned by this test module.

    Each node is ``ray start --block`` in a new session, so the node's raylet, object store,
    agents and workers all carry that session id, and `kill` ends exactly those processes.
    Nodes start one after another: raylets sharing a session directory pick their socket
    names by probing, which races when two start at once.
    """

    def __init__(self, temp_dir: str) -> None:
        self.temp_dir = temp_dir
        self.address = f"{HEAD}:{_free_port()}"
        self.nodes: dict[str, subprocess.Popen] = {}
        self.head: str | None = None  # (the first node started)
        # Token authentication is on by default in Ray 2.60 and would refuse the workers;
        # a fast health check makes a killed node read as dead within ~2 s, not ~30 s.
        self.env = dict(
            os.environ,
            RAY_AUTH_MODE="disabled",
            RAY_USAGE_STATS_ENABLED="0",
            RAY_health_check_period_ms="500",
            RAY_health_check_timeout_ms="1000",
            RAY_health_check_failure_threshold="3",
        )

    def start(self, *ips: str, cpus: int = 1) -> None:
        """Start nodes at ``ips`` (the head first, alone) and wait until each reports started.

        Each node gets a temp dir of its own: raylets sharing one pick their socket names by
        probing the directory, which races when two start at once.
        """
        launched = {ip: self._launch(ip, cpus) for ip in ips}
        deadline = time.monotonic() + START_TIMEOUT * len(ips)  # (they start at once, sharing 2 cores)
        for ip, log in launched.items():
            if not self._started(ip, log, deadline):
                # Ray gives a raylet 30 s to register with the GCS (hard-coded in ray 2.60); on a
                # loaded 2-core machine four starting at once once took longer. Once more, alone.
                self.kill(ip)
                log = self._launch(ip, cpus, attempt=1)
                if not self._started(ip, log, time.monotonic() + START_TIMEOUT):
                    raise RuntimeError(f"ray node {ip} did not start:\n{log.read_text()[-1500:]}")

    def _started(self, ip: str, log: pathlib.Path, deadline: float) -> bool:
        while "Ray runtime started" not in log.read_text():
            if self.nodes[ip].poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def _launch(self, ip: str, cpus: int, attempt: int = 0) -> pathlib.Path:
        ports = [
            f"--{name}-port={_free_port()}"
            for name in (
                "node-manager", "object-manager", "dashboard-agent-listen",
                "dashboard-agent-grpc", "runtime-env-agent", "metrics-export",
            )
        ]
        self.head = self.head or ip
        if ip == self.head:
            role = ["--head", f"--port={self.address.split(':')[1]}",
                    "--include-dashboard=false", f"--dashboard-port={_free_port()}"]
        else:
            role = [f"--address={self.address}"]
        node_dir = pathlib.Path(self.temp_dir) / (ip.rsplit(".", 1)[1] + (f"-{attempt}" if attempt else ""))
        node_dir.mkdir()
        log = node_dir / "start.log"
        ray_cli = pathlib.Path(sys.executable).parent / "ray"
        command = [str(ray_cli), "start", "--block", *role, f"--node-ip-address={ip}",
                   f"--num-cpus={cpus}", "--object-store-memory=200000000",
                   f"--temp-dir={node_dir}", "--disable-usage-stats", *ports]
        with log.open("w") as out:
            self.nodes[ip] = subprocess.Popen(command, env=self.env, start_new_session=True,
                                              stdout=out, stderr=subprocess.STDOUT,
                                              preexec_fn=_terminate_with_parent)
        return log

    def kill(self, *ips: str) -> None:
        """SIGKILL every process of the nodes at ``ips`` (all nodes if none) and wait."""
        chosen = [self.nodes[ip] for ip in ips or list(self.nodes)]
        sids = {p.pid for p in chosen}
        for pid in _sessions_processes(sids):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for process in chosen:
            process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while _sessions_processes(sids) and time.monotonic() < deadline:
            time.sleep(0.1)

    def alive(self) -> set[str]:
        """Addresses of the nodes the cluster currently counts as alive."""
        if not ray.is_initialized():  # the executors connect lazily, on their first chunk
            ray.init(address=self.address, log_to_driver=False)
        return {n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}


@pytest.fixture(scope="module")
def cluster():
    if not sys.platform.startswith("linux"):
        pytest.skip("the loopback multi-node cluster needs Linux (127.0.0.0/8 and /proc)")
    # This module runs before tests/test_executors.py (its name sorts first) on purpose: a process
    # that ran a local Ray and shut it down cannot then drive a multi-node cluster reliably (the
    # workers find the driver's objects' owner dead); the reverse order works.
    if ray.is_initialized():
        ray.shutdown()
    # Short: Ray's unix socket paths live under it and are limited to ~107 characters.
    temp_dir = tempfile.mkdtemp(prefix="orc", dir="/tmp")
    local = LocalCluster(temp_dir)
    try:
        try:
            local.start(HEAD, cpus=0)
        except RuntimeError as err:
            pytest.skip(f"a local Ray cluster cannot start on this machine: {err}")
        local.start(*WORKERS)
        yield local
    finally:
        ray.shutdown()
        local.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def executor(cluster) -> RayExecutor:
    """Connects through ``address=`` on first use, as a user pointing at a cluster would."""
    executor = RayExecutor(address=cluster.address, init_options={"log_to_driver": False})
    return executor


# --- functions that run on the cluster -------------------------------------------------


@orca.function_pod(output_keys=["y", "node", "pid"])
def where(x: int) -> tuple[int, str, int]:
    """``x * x`` plus where it ran (``node`` is the raylet's address)."""
    time.sleep(0.003)  # a chunk takes long enough for both nodes to get work
    return x * x, ray.util.get_node_ip_address(), os.getpid()


@orca.function_pod(output_keys=["size", "crc"])
def file_digest(path: pathlib.Path) -> tuple[int, int]:
    """Read a file on whichever node runs the call."""
    data = path.read_bytes()
    return len(data), zlib.crc32(data)


@orca.function_pod(output_keys=["size", "crc", "node"])
def blob_digest(blob: bytes) -> tuple[int, int, str]:
    return len(blob), zlib.crc32(blob), ray.util.get_node_ip_address()


def build(store: orca.Store, n: int, name: str = "spread") -> orca.Pipeline:
    pipeline = orca.Pipeline(name, store=store)
    with pipeline:
        where.pod(orca.DictSource([{"k": i, "x": i} for i in range(n)], tags=["k"], source_id="xs"))
    return pipeline


def driver_io() -> int:
    """Bytes this process moved through read/write syscalls (files and sockets, gRPC too)."""
    fields = dict(line.split(": ") for line in pathlib.Path("/proc/self/io").read_text().splitlines())
    return int(fields["rchar"]) + int(fields["wchar"])


# --- tests ------------------------------------------------------------------------------


def test_a_pipeline_computes_on_several_nodes_and_matches_the_in_process_run(cluster, executor, tmp_path):
    result = build(orca.DeltaStore(tmp_path / "ray"), 300).run(executor=executor, progress=False)
    assert result.counts["where"] == orca.Counts(0, 300, 0)
    on_ray = build(orca.DeltaStore(tmp_path / "ray"), 300)["where"].results().collect().sort("k")
    assert set(on_ray["node"]) <= set(WORKERS)  # never the head: it has no CPUs
    assert on_ray["node"].n_unique() >= 2
    assert on_ray["pid"].n_unique() >= 2
    assert os.getpid() not in set(on_ray["pid"])

    local = build(orca.DeltaStore(tmp_path / "local"), 300)
    local.run(progress=False)
    in_process = local["where"].results().collect().sort("k")
    assert on_ray.select("k", "y").equals(in_process.select("k", "y"))


def test_closures_and_lambdas_are_shipped_by_cloudpickle(cluster, executor):
    offset, table_of = 7, np.arange(1000) * 3  # captured by the closure, shipped by value

    def add_and_look_up(chunk: pa.Table) -> pa.Table:
        time.sleep(0.05)  # long enough that the 4 chunks in flight need both nodes (even under load)
        ids = chunk.column("id").to_numpy()
        return pa.table({"id": ids, "z": ids + offset + table_of[ids],
                         "node": [ray.util.get_node_ip_address()] * len(ids)})

    table = pa.table({"id": np.arange(1000)})
    out = pa.concat_tables(executor.with_options(max_chunk_rows=50).map_chunks(add_and_look_up, table))
    out = out.sort_by("id")
    assert out.column("z").to_pylist() == [i + 7 + 3 * i for i in range(1000)]
    assert set(out.column("node").to_pylist()) <= set(WORKERS)
    assert len(set(out.column("node").to_pylist())) >= 2

    doubled = executor.map_chunks(lambda chunk: chunk.set_column(0, "id", pc.multiply(chunk["id"], 2)), table)
    assert sorted(pa.concat_tables(doubled).column("id").to_pylist()) == list(range(0, 2000, 2))


def test_ten_megabyte_packets_go_through_the_object_store_not_the_driver(cluster, executor):
    """Six 10 MB packets go out and six 10 MB outputs come back (120 MB in all), yet the
    driver's own read/write syscalls (every socket byte, gRPC included, is counted in
    /proc/self/io) move under 2 MB: the driver writes each chunk once into its node's
    shared-memory object store, the worker's raylet pulls it from there, and outputs come
    back the same way, mapped into the driver rather than streamed through it."""
    rng = np.random.default_rng(0)
    blobs = [rng.integers(0, 256, 10 * MB, dtype=np.uint8).tobytes() for _ in range(6)]
    table = pa.table({"i": np.arange(6), "blob": pa.array(blobs, pa.large_binary())})

    def reverse(chunk: pa.Table) -> pa.Table:
        out = [bytes(b.as_py()[::-1]) for b in chunk.column("blob")]
        return pa.table({"i": chunk.column("i"), "rev": pa.array(out, pa.large_binary()),
                         "node": [ray.util.get_node_ip_address()] * chunk.num_rows})

    list(executor.map_chunks(reverse, table.slice(0, 2)))  # start the workers, load the code
    before = driver_io()
    outputs = list(executor.map_chunks(reverse, table))
    moved = driver_io() - before
    # Chunks are capped so 4 in flight, in and out, fit the head's 200 MB object store.
    assert max(o.num_rows for o in outputs) <= 200 * MB // (4 * 2) // (10 * MB)
    out = pa.concat_tables(outputs).sort_by("i")
    assert [b.as_py() for b in out.column("rev")] == [b[::-1] for b in blobs]
    assert set(out.column("node").to_pylist()) <= set(WORKERS)  # not the driver's node
    assert moved < 2 * MB, f"the driver moved {moved:,} bytes through syscalls for 120 MB of packets"


def test_a_pipeline_over_ten_megabyte_packets_runs_on_the_cluster(cluster, executor, tmp_path):
    """Bytes packets held by the driver (a DictSource) go to the worker nodes through the
    object store; the results come back and are committed by the driver."""
    rng = np.random.default_rng(2)
    blobs = [rng.integers(0, 256, 10 * MB, dtype=np.uint8).tobytes() for _ in range(6)]
    pipeline = orca.Pipeline("blobs", store=orca.DeltaStore(tmp_path / "store"))
    with pipeline:
        rows = [{"k": i, "blob": b} for i, b in enumerate(blobs)]
        blob_digest.pod(orca.DictSource(rows, tags=["k"], source_id="blobs"))
    before = driver_io()
    result = pipeline.run(executor=executor, progress=False)
    moved = driver_io() - before
    assert result.counts["blob_digest"] == orca.Counts(0, 6, 0)
    # The whole run (hashing, store writes, dispatch) moves ~1.8 MB through the driver's
    # syscalls for 60 MB of packets: the packets never cross a socket or a file here.
    assert moved < 6 * MB, f"the driver moved {moved:,} bytes for 60 MB of packets"
    got = pipeline["blob_digest"].results().collect().sort("k")
    assert got["crc"].to_list() == [zlib.crc32(b) for b in blobs]
    assert set(got["node"]) <= set(WORKERS)  # not the driver's node: the packets crossed nodes


def test_files_are_read_by_the_driver_once_to_hash_and_never_shipped(cluster, executor, tmp_path):
    """Four 10 MB files: the driver reads each once (its content hash); the chunk sent to a
    worker holds only paths, and the worker node reads the file itself."""
    rng = np.random.default_rng(1)
    data = tmp_path / "data"
    data.mkdir()
    expected = {}
    for i in range(4):
        content = rng.integers(0, 256, 10 * MB, dtype=np.uint8).tobytes()
        (data / f"f{i}.bin").write_bytes(content)
        expected[f"f{i}"] = (len(content), zlib.crc32(content))
    before = driver_io()  # from before the source is built, wherever it reads the files
    pipeline = orca.Pipeline("files", store=orca.DeltaStore(tmp_path / "store"))
    with pipeline:
        file_digest.pod(orca.GlobSource(str(data / "{name}.bin"), source_id="files"))
    result = pipeline.run(executor=executor, progress=False)
    moved = driver_io() - before
    assert result.counts["file_digest"] == orca.Counts(0, 4, 0)
    got = pipeline["file_digest"].results().collect()
    assert {r["name"]: (r["size"], r["crc"]) for r in got.iter_rows(named=True)} == expected
    assert 40 * MB <= moved < 50 * MB, f"the driver moved {moved:,} bytes for 40 MB of files"


def test_a_function_the_workers_cannot_load_raises_executor_error(cluster, executor):
    import types

    module = types.ModuleType("orca_only_in_this_driver")
    exec("def ghost(chunk):\n    return chunk\n", module.__dict__)
    sys.modules[module.__name__] = module  # importable here, not on the worker nodes
    try:
        with pytest.raises(ExecutorError, match=r"127\.0\.0\.[3-6] could not load function .*ghost"):
            list(executor.map_chunks(module.ghost, pa.table({"id": [1, 2, 3]})))
    finally:
        del sys.modules[module.__name__]


def test_max_chunk_bytes_is_checked_at_construction():
    assert RayExecutor().with_options(max_chunk_bytes=2**20).max_chunk_bytes == 2**20
    for bad in (0, -1, 1.5, "1MB"):
        with pytest.raises(ExecutorError, match="max_chunk_bytes must be None or an integer >= 1"):
            RayExecutor(max_chunk_bytes=bad)


# --- a worker node dies mid-run ----------------------------------------------------------


# Enough work (~4.5 s on four 1-CPU nodes) that the kill lands well before the run ends,
# even on a loaded machine where commits lag.
ROWS = 360


# The nodes the tests below kill work slower, and once told to (a flag file per node), every
# call on them hangs until the node dies: so a call is under way on the victim when it dies,
# however the machine's load spreads the run over the nodes and Ray's leases come and go (CI saw
# the other nodes finish the run before the kill landed, and a kill between two of the victim's
# calls, which then fails nothing).
SLOW_NODES = ("127.0.0.5", "127.0.0.6")
FLAGS = pathlib.Path(tempfile.gettempdir()) / "orca-test-kill-flags"


@orca.function_pod(output_keys=["y", "node"])
def slow_square(x: int) -> tuple[int, str]:
    node = ray.util.get_node_ip_address()
    if node not in SLOW_NODES:
        time.sleep(0.05)
        return x * x, node
    time.sleep(0.3)
    if (FLAGS / f"hang-{node}").exists():
        (FLAGS / f"busy-{node}").touch()
        time.sleep(600)  # (until the node is killed)
    return x * x, node


def run_and_kill(cluster, store, executor, victim: str, rows: int = ROWS):
    """Run ``slow_square`` over ``rows`` rows on the cluster and kill the worker node at
    ``victim`` once results computed on it are committed and a call is under way on it.
    Returns the run's outcome (a RunResult or the exception it raised) and the pipeline."""
    if victim not in cluster.alive():
        pytest.fail(f"worker node {victim} is not alive before the test kills it")
    FLAGS.mkdir(exist_ok=True)
    hang, busy = FLAGS / f"hang-{victim}", FLAGS / f"busy-{victim}"
    hang.unlink(missing_ok=True)
    busy.unlink(missing_ok=True)
    pipeline = orca.Pipeline("kill", store=store)
    with pipeline:
        slow_square.pod(orca.DictSource([{"k": i, "x": i} for i in range(rows)], tags=["k"], source_id="xs"))

    results = pathlib.Path(store.location) / slow_square.pod.results_table
    seen = {}

    def kill_when_victim_has_committed() -> None:
        # Watch the results table itself: provenance (what results() joins) is appended only
        # every second, results as each chunk comes back.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not hang.exists():
            try:
                if victim in set(pl.read_delta(str(results))["node"]):
                    hang.touch()  # the victim's next call (or the one under way) hangs
            except Exception:  # not created yet
                pass
            time.sleep(0.02)
        while time.monotonic() < deadline and not busy.exists():
            time.sleep(0.02)
        seen["busy"] = busy.exists()
        cluster.kill(victim)

    killer = threading.Thread(target=kill_when_victim_has_committed)
    killer.start()
    try:
        outcome = pipeline.run(executor=executor.with_options(max_chunk_rows=2), progress=False)
    except Exception as err:
        outcome = err
    killer.join()
    hang.unlink(missing_ok=True)
    busy.unlink(missing_ok=True)
    if not seen["busy"]:
        pytest.fail(f"no call was under way on {victim} within 30 s of its first commit: nothing to kill it during")
    return outcome, pipeline


def test_a_killed_worker_node_fails_clearly_and_a_rerun_computes_only_what_is_missing(cluster, executor, tmp_path):
    store = orca.DeltaStore(tmp_path / "store", max_seconds=0.2)  # commit often: see run_and_kill
    no_retry = executor.with_options(task_options={"max_retries": 0})
    outcome, pipeline = run_and_kill(cluster, store, no_retry, victim="127.0.0.5")
    assert isinstance(outcome, ExecutorError), outcome
    assert "127.0.0.5" in str(outcome) and "slow_square" in str(outcome)
    assert "run again" in str(outcome)
    kept = pipeline["slow_square"].results().collect()
    assert 0 < kept.height < ROWS
    assert "127.0.0.5" in set(kept["node"])  # committed before the node died, and kept

    again = pipeline.run(executor=executor, progress=False)
    assert again.counts["slow_square"] == orca.Counts(kept.height, ROWS - kept.height, 0)
    final = pipeline["slow_square"].results().collect().sort("k")
    assert final["y"].to_list() == [k * k for k in range(ROWS)]
    assert final.join(kept, on="k", suffix="_kept").filter(pl.col("node") != pl.col("node_kept")).is_empty()


def test_a_killed_worker_node_is_retried_by_ray_and_the_run_finishes(cluster, executor, tmp_path):
    outcome, pipeline = run_and_kill(cluster, orca.DeltaStore(tmp_path / "store", max_seconds=0.2), executor,
                                     victim="127.0.0.6")
    assert isinstance(outcome, orca.RunResult), outcome
    assert outcome.status == "succeeded"
    assert outcome.counts["slow_square"] == orca.Counts(0, ROWS, 0)
    final = pipeline["slow_square"].results().collect().sort("k")
    assert final["y"].to_list() == [k * k for k in range(ROWS)]
    assert "127.0.0.6" in set(final["node"])

