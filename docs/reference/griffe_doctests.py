"""A griffe extension for the API reference: fence doctests, read Sphinx roles as code.

orca's docstrings put their doctests in the text (they run under pytest's
``--doctest-modules``), not always under an ``Examples`` heading. Markdown would read a
``>>>`` line as three nested block quotes, so each run of example lines (``>>>``/``...``
prompts and the output after them, up to a blank line) is wrapped in a ``pycon`` code fence
before the docstring is parsed. Sphinx roles (``:func:`x```, ``:class:`~a.B```), which some
docstrings use, become inline code. Used by ``mkdocs.yml`` (mkdocstrings ``extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe


def fence_doctests(text: str) -> str:
    """Wrap every run of doctest lines in a fenced ``pycon`` block, keeping its indentation.

    >>> fence_doctests("Add.\\n\\n>>> 1 + 1\\n2\\n\\nDone.").splitlines()
    ['Add.', '', '```pycon', '>>> 1 + 1', '2', '```', '', 'Done.']
    """
    out: list[str] = []
    indent: str | None = None  # the indentation of the open fence, None when none is open
    in_fence = False  # inside a fence the docstring already had
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith("```") and indent is None:
            in_fence = not in_fence
        elif indent is None and not in_fence and stripped.startswith(">>>"):
            indent = line[: len(line) - len(stripped)]
            out.append(f"{indent}```pycon")
        elif indent is not None and not stripped:
            out.append(f"{indent}```")
            indent = None
        out.append(line)
    if indent is not None:
        out.append(f"{indent}```")
    return "\n".join(out)


_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj):`~?([^`]+)`")


def plain_roles(text: str) -> str:
    """Turn Sphinx cross-reference roles into inline code.

    >>> plain_roles("see :func:`default_store` and :class:`~orca.claims.Lease`")
    'see `default_store` and `orca.claims.Lease`'
    """
    return _ROLE.sub(r"`\1`", text)


class DoctestFences(griffe.Extension):
    """Fence the doctests of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = plain_roles(fence_doctests(obj.docstring.value))
