"""The pipeline being recorded by ``with pipeline:`` (a context variable, so threads and
async tasks each see their own)."""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any

_active: ContextVar[Any] = ContextVar("orca_active_pipeline", default=None)


def active_pipeline() -> Any:
    """The pipeline inside whose ``with`` block we are, or ``None``."""
    return _active.get()


def enter(pipeline: Any) -> Token:
    """Make ``pipeline`` the active one; returns the token :func:`leave` needs."""
    return _active.set(pipeline)


def leave(token: Token) -> None:
    """Restore the pipeline that was active before :func:`enter`."""
    _active.reset(token)


def recorded(producer: Any, inputs: tuple, output: Any) -> Any:
    """Let the active pipeline (if any) record ``producer`` applied to ``inputs``.

    Returns the stream downstream code should use: ``output`` itself outside a pipeline, or
    the pipeline node's output stream inside one.
    """
    pipeline = _active.get()
    return output if pipeline is None else pipeline.record(producer, inputs, output)
