"""Functions that hang, hang in native code, or crash their process on chosen packets; used by
``tests/test_liveness.py`` (a module of its own so worker processes import it by name)."""

from __future__ import annotations

import asyncio
import ctypes
import hashlib
import os
import signal
import time

import orca

HANG, NATIVE, ABORT, EXIT = 5, 7, 13, 17  # the packets (x) that misbehave


@orca.function_pod(output_keys="y")
def sleepy(x: int) -> int:
    """Hangs (interruptibly: ``time.sleep``) on packet ``HANG``."""
    if x == HANG:
        time.sleep(60)
    return x * x


@orca.function_pod(output_keys="y", timeout=0.5)
def sleepy_pod_timeout(x: int) -> int:
    """Like :func:`sleepy`, with ``timeout=0.5`` on the pod."""
    if x == HANG:
        time.sleep(60)
    return x * x


@orca.function_pod(output_keys="y", timeout=0.2)
def a_bit_slow(x: int) -> int:
    """Takes 0.5 s on packet ``HANG``: past its pod's timeout, within a run's longer one."""
    if x == HANG:
        time.sleep(0.5)
    return x * x


@orca.function_pod(output_keys="y")
def stuck_in_native_code(x: int) -> int:
    """Hangs in C code that a signal cannot interrupt (PBKDF2 in OpenSSL, ~60 s; the GIL is
    released) on packet ``NATIVE``, and in ``time.sleep`` on packet ``HANG``."""
    if x == NATIVE:
        hashlib.pbkdf2_hmac("sha256", b"x", b"y", 150_000_000)
    if x == HANG:
        time.sleep(60)
    return x * x


@orca.function_pod(output_keys="y")
def stuck_holding_the_gil(x: int) -> int:
    """Hangs in C code holding the GIL on packet ``NATIVE``: ``sleep(60)`` through
    ``ctypes.PyDLL`` (which keeps the GIL) with ``SIGALRM`` blocked, so neither the timer nor
    a watchdog thread in the worker can act."""
    if x == NATIVE:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        ctypes.PyDLL(None).sleep(60)
    return x * x


@orca.function_pod(output_keys="y")
async def async_sleepy(x: int) -> int:
    """A coroutine that hangs on packet ``HANG``."""
    await asyncio.sleep(60 if x == HANG else 0)
    return x * x


@orca.function_pod(output_keys="y")
def crashing(x: int) -> int:
    """Kills its process on packets ``ABORT`` (``os.abort()``: SIGABRT) and ``EXIT``
    (``os._exit(3)``)."""
    if x == ABORT:
        os.abort()
    if x == EXIT:
        os._exit(3)
    return x * x


def source(n: int) -> orca.DictSource:
    return orca.DictSource([{"i": i, "x": i} for i in range(n)], tags=["i"], source_id="ints")


def pipeline(pod: orca.FunctionPod, store: orca.Store, n: int = 40) -> orca.Pipeline:
    built = orca.Pipeline(f"liveness_{pod.name}", store=store)
    with built:
        pod(source(n))
    return built
