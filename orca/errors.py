"""Typed errors raised by orca. Every message names the column, node, tag or path at fault."""

from __future__ import annotations


class OrcaError(Exception):
    """Root of every error orca raises on purpose."""


class HashingError(OrcaError, TypeError):
    """A value has no canonical encoding (unsupported type) or a file to hash is missing."""


class SchemaError(OrcaError, ValueError):
    """Columns, types or annotations do not match what was declared or expected."""


class SourceError(OrcaError, ValueError):
    """A source cannot be built: unknown tag column, empty input, unreadable file, duplicate tags."""


class PodError(OrcaError):
    """A function pod is declared wrongly, or its function failed or returned a bad output."""


class StoreError(OrcaError):
    """A store path holds a foreign or incompatible table, or a commit kept failing."""


class ExecutorError(OrcaError):
    """An executor cannot run the work it was given (e.g. an unpicklable function)."""


class IdentityWarning(UserWarning):
    """A function pod reads something orca cannot include in its identity (the message names it)."""
