"""Fixtures shared by the test modules (helpers that are plain functions live in ``tests/helpers.py``)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pyarrow.fs as pafs
import pytest

import orca

# Fixture pipelines are imported by the tests (and run as scripts), test servers run as scripts;
# they hold no tests or doctests of their own, and some read their configuration from the
# environment (or patch a library) when imported.
collect_ignore_glob = ["pipelines/*.py", "servers/*.py"]


# The tests that start Ray run in one pytest-xdist worker, in file order: a process that ran a
# local Ray (test_executors) and shut it down cannot then drive the multi-node cluster of
# test_cluster_ray (its workers find the driver's objects' owner dead), and two clusters at once
# starve a 2-core machine. (pyproject.toml runs the suite with --dist loadfile; xdist_group
# marks would need xdist to rename the tests, which pytest 9 no longer lets it do.)
_RAY_FILES = {"test_cluster_ray.py", "test_executors.py"}


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    from xdist.scheduler import LoadFileScheduling

    class OneRayWorker(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            file = super()._split_scope(nodeid)
            return "ray" if file.rsplit("/", 1)[-1] in _RAY_FILES else file

    return OneRayWorker(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The multi-node cluster's tests before any other test that starts Ray (see above)."""
    items.sort(key=lambda item: item.path.name != "test_cluster_ray.py" and item.path.name in _RAY_FILES)


@pytest.fixture(params=["memory", "delta"])
def store(request: pytest.FixtureRequest, tmp_path) -> orca.Store:
    """A fresh store of each kind: in memory, and a Delta store in a temporary directory."""
    return orca.MemoryStore() if request.param == "memory" else orca.DeltaStore(tmp_path / "store")


# ---- object-storage servers (loopback only, started and stopped by the tests) -------------------
ROOT = pathlib.Path(__file__).resolve().parent.parent
AZURITE = ROOT / ".ci" / "node" / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
# Azurite's documented development account (public, the same in every installation).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
_START_SECONDS = 30.0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_port(proc: subprocess.Popen, port: int, what: str) -> None:
    """Wait (bounded) until ``proc`` accepts connections on 127.0.0.1:``port``; skip if it cannot."""
    deadline = time.monotonic() + _START_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.skip(f"{what} exited at start (code {proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    proc.kill()
    pytest.skip(f"{what} did not listen on 127.0.0.1:{port} within {_START_SECONDS:.0f} s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


@dataclasses.dataclass(frozen=True)
class ObjectStore:
    """A bucket (container) on a test server: ``url(name)`` is a fresh store URL under it;
    ``options`` are the storage options that reach it, ``env`` the same as environment
    variables (for subprocesses and the CLI)."""

    scheme: str
    bucket: str
    options: dict[str, str]
    env: dict[str, str]

    def url(self, name: str) -> str:
        return f"{self.scheme}://{self.bucket}/{name}-{uuid.uuid4().hex[:8]}"

    def store(self, name: str, **kwargs) -> orca.DeltaStore:
        return orca.DeltaStore(self.url(name), storage_options=self.options, **kwargs)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[ObjectStore]:
    """An S3 server (moto's, in a subprocess: deltalake's file listing holds the GIL, so an
    in-process server thread could not answer it; its conditional writes made atomic, as S3's
    are, by ``tests/servers/moto_s3.py``) with bucket ``orca-test``."""
    if importlib.util.find_spec("moto") is None:
        pytest.skip("moto[server] is not installed (pip install -e '.[dev]')")
    port = _free_port()
    server = ROOT / "tests" / "servers" / "moto_s3.py"
    proc = subprocess.Popen([sys.executable, str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(proc, port, "the moto S3 server")
        endpoint = f"http://127.0.0.1:{port}"
        env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ALLOW_HTTP": "true", "AWS_REGION": "us-east-1",
               "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
        pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1", scheme="http",
                          endpoint_override=f"127.0.0.1:{port}", allow_bucket_creation=True).create_dir("orca-test")
        options = {**env, "aws_conditional_put": "etag"}
        yield ObjectStore("s3", "orca-test", options, {**env, "AWS_CONDITIONAL_PUT": "etag"})
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def azure_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ObjectStore]:
    """Azurite's blob service (``.ci/node``, installed by ``.ci/run``) with container ``orca-test``."""
    node = shutil.which("node")
    if node is None or not AZURITE.exists():
        pytest.skip("Azurite is not installed: run `npm install --prefix .ci/node azurite@3.37.0` (.ci/run does)")
    version = json.loads((AZURITE.parents[3] / "package.json").read_text())["version"]
    if tuple(int(p) for p in version.split(".")[:2]) < (3, 37):
        # Older Azurite ignores the blob listing's startFrom, which deltalake's log reads rely on.
        pytest.skip(f"Azurite {version} is too old (3.37 or later is needed): rerun the npm install in .ci/run")
    port = _free_port()
    proc = subprocess.Popen([node, str(AZURITE), "--blobHost", "127.0.0.1", "--blobPort", str(port),
                             "--location", str(tmp_path_factory.mktemp("azurite")), "--skipApiVersionCheck",
                             "--loose", "--silent", "--disableTelemetry"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for_port(proc, port, "Azurite")
        endpoint = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
        pafs.AzureFileSystem(AZURITE_ACCOUNT, account_key=AZURITE_KEY, blob_storage_authority=f"127.0.0.1:{port}",
                             blob_storage_scheme="http").create_dir("orca-test")
        options = {"azure_storage_account_name": AZURITE_ACCOUNT, "azure_storage_account_key": AZURITE_KEY,
                   "azure_storage_endpoint": endpoint, "allow_http": "true"}
        env = {"AZURE_STORAGE_ACCOUNT_NAME": AZURITE_ACCOUNT, "AZURE_STORAGE_ACCOUNT_KEY": AZURITE_KEY,
               "AZURE_STORAGE_ENDPOINT": endpoint, "AZURE_ALLOW_HTTP": "true"}
        yield ObjectStore("az", "orca-test", options, env)
    finally:
        _stop(proc)


@pytest.fixture(params=["s3", "azure"])
def object_store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each object-storage server in turn (a test using it runs once per backend)."""
    return request.getfixturevalue("s3_server" if request.param == "s3" else "azure_server")
