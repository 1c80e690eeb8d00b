"""Worker processes for :class:`~orca.executors.ProcessExecutor`: starting, reusing, stopping.

Each worker is one process with a duplex pipe to the driver; the driver sends it one chunk at
a time, so when a worker dies the driver knows exactly which chunk it was computing. Workers
are started by loky by default: a fresh interpreter (``fork`` + ``exec``) that, unlike the
standard library's ``spawn``/``forkserver``, does not run the driver's ``__main__`` script, so
scripts without an ``if __name__ == "__main__":`` guard work and are not run twice.

Workers that finish a call cleanly wait, idle, for the next call in this process (starting
an interpreter and importing orca takes about a second); one idle for ``_IDLE_SECONDS``
exits by itself, and the driver stops handing out workers idle for ``_REUSE_SECONDS`` (well
before, so it never sends work to one that is exiting). A worker whose driver goes away (even one
killed with SIGKILL in the middle of a call) exits: its watchdog thread sees its parent change.

Messages, driver to worker: ``("load", token, payload, name)`` (a cloudpickled chunk
function, once per call), ``("run", chunk)``, ``None`` (exit). Worker to driver, one per
chunk: ``("ok", output, seconds)``, ``("error", RemoteError)``, or, from the watchdog,
``("hung", row, seconds)`` just before the worker exits (a call stuck past its timeout in
native code, where the ``SIGALRM`` timer of :mod:`orca.calls` cannot interrupt it).
"""

from __future__ import annotations

import ast
import atexit
import multiprocessing
import multiprocessing.forkserver
import os
import pathlib
import signal
import sys
import threading
import time
from typing import Any

import cloudpickle
import pyarrow as pa
from loky.backend.context import get_context as loky_context

from orca.errors import ExecutorError
from orca.executors._chunking import ChunkFn, RemoteError, run_shipped

_IDLE_SECONDS = 300.0  # a worker idle this long exits
_REUSE_SECONDS = 240.0  # the driver reuses workers idle for less than this
_GRACE = 1.0  # seconds past a call's timeout before the watchdog deems it stuck in native code
_WATCH_SECONDS = 0.1  # how often the watchdog looks at the call under way
_HUNG_EXIT = 70  # exit code of a worker whose watchdog stopped it
_ORPHAN_EXIT = 71  # exit code of a worker whose driver went away


class Worker:
    """One worker process and the driver's end of its pipe."""

    def __init__(self, start_method: str) -> None:
        if start_method == "loky":
            context: Any = loky_context("loky")
        else:
            check_main_guard(start_method)
            context = multiprocessing.get_context(start_method)
            if start_method == "forkserver":
                _preload_forkserver(context)
        self.start_method = start_method
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker_main, args=(child,), name="orca-worker")
        self.process.start()
        child.close()
        self.token: bytes | None = None  # the call whose function it has loaded
        self.idle_since = time.monotonic()
        self.ready = False  # it said it started (it imported orca and runs its loop)

    def send(self, message: Any) -> bool:
        """Send ``message``; False when the worker is gone."""
        try:
            self.conn.send(message)
            return True
        except (OSError, ValueError):
            return False

    def receive(self) -> Any:
        """The worker's reply to its chunk, or None when there is none (yet, or ever: it died)."""
        try:
            while self.conn.poll():
                message = self.conn.recv()
                if message != ("ready",):
                    return message
                self.ready = True
        except (EOFError, OSError):
            pass
        return None

    def kill(self) -> None:
        """Stop the process now (it never holds store writes: killing it loses only work)."""
        if self.process.exitcode is None:
            try:  # (loky's Popen has no kill())
                os.kill(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.join()
        self.conn.close()

    def ended(self) -> str:
        """How the (dead) process ended, for messages: its exit code or signal."""
        self.process.join(timeout=5)
        code = self.process.exitcode
        if code is None:
            return "stopped responding"
        if code < 0:
            try:
                return f"killed by signal {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"


# -- reuse across calls -----------------------------------------------------------------------
_idle: list[Worker] = []
_idle_lock = threading.Lock()


def take(start_method: str) -> Worker:
    """An idle worker started with ``start_method`` (alive, not about to exit), else a new one."""
    check_importable()
    with _idle_lock:
        while True:
            found = next((w for w in reversed(_idle) if w.start_method == start_method), None)
            if found is None:
                break
            _idle.remove(found)
            if found.process.is_alive() and time.monotonic() - found.idle_since < _REUSE_SECONDS:
                return found
            found.kill()
    return Worker(start_method)


def give_back(worker: Worker) -> None:
    """Keep a worker that finished its chunks cleanly for the next call."""
    worker.idle_since = time.monotonic()
    with _idle_lock:
        _idle.append(worker)


@atexit.register
def _close_idle() -> None:
    """At exit, tell idle workers to go (multiprocessing's own exit handler then joins them)."""
    with _idle_lock:
        for worker in _idle:
            worker.send(None)
            worker.conn.close()
        _idle.clear()


def check_importable() -> None:
    """Refuse, before starting workers, when a fresh interpreter would import another ``orca``
    than this process did: workers import it anew from ``sys.path`` (e.g. a folder named
    ``orca`` beside the script or in the working directory shadows the package there)."""
    import orca

    loaded = [os.path.realpath(p) for p in orca.__path__]
    spec = next((s for s in (getattr(f, "find_spec", lambda *a: None)("orca", None) for f in sys.meta_path)
                 if s is not None), None)
    found = [os.path.realpath(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
    if found != loaded:
        where = ", ".join(found) or (spec.origin if spec is not None else "nowhere")
        raise ExecutorError(
            f"ProcessExecutor workers would import another 'orca' than this process: {where} instead of "
            f"the package at {', '.join(loaded)} (a folder or module named 'orca' on sys.path, e.g. beside "
            f"your script or in the working directory {os.getcwd()}, shadows it in a fresh interpreter); "
            "rename that folder or module, or run from another directory")


def check_main_guard(start_method: str) -> None:
    """Refuse, before any process starts, to start ``spawn``/``forkserver`` workers from a
    script's unguarded top-level code: they run the script again (a second pipeline run)."""
    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    frame = sys._getframe()
    while frame is not None and not (frame.f_code.co_name == "<module>" and frame.f_globals is vars(main)):
        frame = frame.f_back
    if frame is None or not path or not path.endswith(".py"):
        return  # not called from a script's top level (a notebook, a function, a test)
    try:
        tree = ast.parse(pathlib.Path(path).read_text())
    except (OSError, SyntaxError, ValueError):
        return
    line = frame.f_lineno
    if not any(isinstance(node, ast.If) and _is_main_test(node.test) and node.lineno <= line <= node.end_lineno
               for node in ast.walk(tree)):
        raise ExecutorError(
            f"ProcessExecutor(start_method={start_method!r}) was called from the top level of {path} (line "
            f"{line}) outside `if __name__ == \"__main__\":`; its workers would run the script again. Use the "
            "default start_method='loky', which does not run the script in workers, or move the code that "
            "runs the pipeline under `if __name__ == \"__main__\":`")


def _is_main_test(test: ast.expr) -> bool:
    return ast.unparse(test).replace("'", '"') in ('__name__ == "__main__"', '"__main__" == __name__')


def _preload_forkserver(context: Any) -> None:
    """Have the fork server import this module (pyarrow, cloudpickle) once, not each worker.

    Only takes effect before the fork server starts; keeps the modules already listed
    (``__main__`` by default) by reading the stdlib's private list when it is there.
    """
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    modules = list(getattr(server, "_preload_modules", None) or ["__main__"])
    if __name__ not in modules:
        context.set_forkserver_preload([*modules, __name__])


# -- worker side ------------------------------------------------------------------------------
def worker_main(conn: Any) -> None:
    """A worker's life: load chunk functions and run chunks until told to stop, the driver
    goes away, or it has been idle for ``_IDLE_SECONDS``. Runs chunks on the main thread, so
    :mod:`orca.calls` can time calls out with ``SIGALRM``."""
    lock = threading.Lock()  # the main thread and the watchdog both send on ``conn``
    loaded: list[Any] = [None]  # the chunk function (the driver loads one before any chunk)
    threading.Thread(target=_watch, args=(conn, lock, loaded, os.getppid()), daemon=True,
                     name="orca-watchdog").start()
    try:
        conn.send(("ready",))  # a worker that dies before this failed to start: no packet is at fault
        while conn.poll(_IDLE_SECONDS):
            message = conn.recv()
            if message is None:
                return
            if message[0] == "load":
                _, _, payload, name = message
                loaded[0] = _load(payload, name)
                continue
            reply = _run(loaded[0], message[1])
            with lock:
                conn.send(reply)
    except (EOFError, OSError, KeyboardInterrupt):  # the driver went away or was interrupted
        return


def _load(payload: bytes, name: str) -> ChunkFn:
    try:
        return cloudpickle.loads(payload)
    except BaseException as err:  # reported on each chunk, as the chunk's error
        failure = ExecutorError(
            f"a worker process could not load function {name}: {type(err).__name__}: {err} "
            "(is the module that defines it importable in the worker?)")
        cause = err

        def cannot_load(chunk: pa.Table) -> pa.Table:
            raise failure from cause

        return cannot_load


def _run(fn: ChunkFn, chunk: pa.Table) -> tuple:
    try:
        output, seconds = run_shipped(fn, chunk)
    except RemoteError as err:
        return ("error", err)
    return ("ok", output, seconds)


def _watch(conn: Any, lock: threading.Lock, loaded: list, parent: int) -> None:
    """Watchdog thread. When the driver is gone (this process's parent changed: it was killed,
    e.g. by a scheduler's SIGKILL), exit, even in the middle of a call, rather than compute for
    nobody. When the call under way has run ``_GRACE`` seconds past its timeout, the
    ``SIGALRM`` timer could not stop it (it is in native code): report its row and exit, so the
    driver records it as timed out and replaces this worker."""
    while True:
        time.sleep(_WATCH_SECONDS)
        if os.getppid() != parent:
            os._exit(_ORPHAN_EXIT)
        fn = loaded[0]
        timeout = getattr(fn, "timeout", None)
        now = fn.current() if timeout is not None else None
        if now is None or time.monotonic() - now[1] < timeout + _GRACE:
            continue
        with lock:
            if fn.current() == now:  # still the same call (not finished meanwhile)
                conn.send(("hung", now[0], time.monotonic() - now[1]))
                os._exit(_HUNG_EXIT)
