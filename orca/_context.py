"""Recording pipelines: what a pod or operator applied inside ``with pipeline:`` reports.

Pods and operators sit below pipelines and never import them. Applying one builds an
:class:`Application` (a value) and hands it to the active :class:`Recorder` -- the interface a
pipeline implements -- which returns the stream downstream code should use (a pipeline returns
its node's output). Outside a ``with`` block there is no recorder and the output is used as is.
The active recorder is a context variable, so threads and async tasks each see their own.
"""

from __future__ import annotations

import dataclasses
from contextvars import ContextVar, Token
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from orca.streams import Stream


@dataclasses.dataclass(frozen=True)
class Application:
    """A pod or operator (``producer``) applied to ``inputs``, giving ``output``."""

    producer: object
    inputs: tuple[Stream, ...]
    output: Stream


class Recorder(Protocol):
    """What ``with pipeline:`` makes active (implemented by :class:`orca.Pipeline`)."""

    def record(self, application: Application) -> Stream: ...


_active: ContextVar[Recorder | None] = ContextVar("orca_active_recorder", default=None)


def active() -> Recorder | None:
    """The recorder inside whose ``with`` block we are, or ``None``."""
    return _active.get()


def enter(recorder: Recorder) -> Token:
    """Make ``recorder`` the active one; returns the token :func:`leave` needs."""
    return _active.set(recorder)


def leave(token: Token) -> None:
    """Restore the recorder that was active before :func:`enter`."""
    _active.reset(token)


def recorded(application: Application) -> Stream:
    """The stream to use for ``application``: its output, or what the active recorder makes of it."""
    recorder = _active.get()
    return application.output if recorder is None else recorder.record(application)
