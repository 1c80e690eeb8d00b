"""Notebook views: small, escaped HTML (no JavaScript) for streams, nodes, pipelines, runs and plans.

The classes' ``_repr_html_`` methods call these plain functions, which read only the public
attributes of what they draw (this module sits below all of them and imports none). Every value
shown goes through :func:`html.escape`.

>>> import orca
>>> s = orca.DictSource([{"id": 1, "x": "<b>"}], tags=["id"], source_id="s")
>>> "&lt;b&gt;" in s._repr_html_() and "<script" not in s._repr_html_()
True
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from orca.graph import Graph
    from orca.nodes import FunctionNode
    from orca.pipeline import RunResult
    from orca.plan import Plan
    from orca.streams import Stream

__all__ = ["stream_html", "node_html", "pipeline_html", "run_html", "plan_html", "table_html"]

PREVIEW_ROWS = 5
_CELL_CHARS = 80  # longer values are cut: a view is a glance, not a dump

_STYLE = ('style="border-collapse:collapse;font-size:12px" border="1" cellpadding="3"')


def _esc(value: Any) -> str:
    text = "" if value is None else str(value)
    if len(text) > _CELL_CHARS:
        text = text[: _CELL_CHARS - 1] + "…"
    return html.escape(text)


def table_html(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    """An HTML table of ``rows`` under ``header`` (every cell escaped)."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_esc(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table {_STYLE}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _frame_html(frame: pl.DataFrame) -> str:
    return table_html(frame.iter_rows(), frame.columns)


def _title(kind: str, name: str, detail: str = "") -> str:
    extra = f" <span style=\"color:#666\">{_esc(detail)}</span>" if detail else ""
    return f"<p><b>{_esc(kind)}</b> <code>{_esc(name)}</code>{extra}</p>"


def _schema_html(stream: Stream) -> str:
    schema = stream.full_schema
    roles = [*((n, "tag") for n in stream.tag_columns), *((n, "packet") for n in stream.packet_columns),
             *((n, "system") for n in stream.system_columns)]
    return table_html(((n, role, schema.field(n).type) for n, role in roles), ["column", "role", "type"])


def stream_html(stream: Stream, rows: int = PREVIEW_ROWS) -> str:
    """A stream's schema (tag, packet and system columns) and its first ``rows`` rows.

    The preview collects ``head(rows)`` of the lazy frame; if that fails (a function pod's
    output whose function raises, say), the view says so instead of raising.
    """
    try:
        preview = _frame_html(stream.lazy().head(rows).collect())
    except Exception as exc:  # noqa: BLE001 - a view must never raise; it shows why there is no preview
        preview = f"<p>(no preview: {_esc(type(exc).__name__)}: {_esc(exc)})</p>"
    return (f"<div>{_title(type(stream).__name__, repr(stream))}{_schema_html(stream)}"
            f"<p>first {rows} rows:</p>{preview}</div>")


def node_html(node: FunctionNode) -> str:
    """A function node: its function, identity, tables and input and output columns (no I/O)."""
    pod = node.pod
    rows = [("function", pod.name), ("function hash", pod.identity.hash), ("provenance table", node.provenance_table),
            ("input tags", ", ".join(node.input.tag_columns)), ("input packets", ", ".join(node.input.packet_columns)),
            ("outputs", ", ".join(pod.output_keys))]
    return f"<div>{_title('FunctionNode', node.label, f'pipeline {node.pipeline}')}{table_html(rows, ['', ''])}</div>"


def _graph_counts_html(graph: Graph) -> str:
    nodes = [n for n in graph.nodes if n.kind == "function"]
    names = list(dict.fromkeys(name for n in nodes for name, _ in n.counts))
    rows = [(n.label, *(dict(n.counts).get(name) for name in names), n.status) for n in nodes]
    return table_html(rows, ["node", *names, "status"]) if names else ""


def pipeline_html(graph: Graph) -> str:
    """A pipeline: its graph as inline SVG, and the counts of its function nodes."""
    detail = graph.annotation or "no runs recorded"
    return (f"<div>{_title('Pipeline', graph.pipeline, detail)}{graph.to_svg()}"
            f"{_graph_counts_html(graph)}</div>")


def run_html(result: RunResult) -> str:
    """A run result: counts per node, and its failures with their messages."""
    counts = table_html(((label, c.cached, c.computed, c.failed) for label, c in result.counts.items()),
                        ["node", "cached", "computed", "failed"])
    failures = result.failures
    if failures.height:
        shown = [c for c in ("node", "tag", "error_type", "message", "attempts") if c in failures.columns]
        more = f"<p>… and {failures.height - 20} more</p>" if failures.height > 20 else ""
        failed = f"<p>failures:</p>{_frame_html(failures.select(shown).head(20))}{more}"
    else:
        failed = "<p>no failures</p>"
    return f"<div>{_title('RunResult', result.run_id, result.status)}{counts}{failed}</div>"


def plan_html(plan: Plan) -> str:
    """A plan: per node, entries served from the store, to compute, pending upstream, and why."""
    rows = [(label, p.total, p.cached, p.to_compute, p.pending,
             ", ".join(f"{k}: {v}" for k, v in sorted(p.reasons.items())))
            for label, p in plan.items()]
    table = table_html(rows, ["node", "total", "cached", "to compute", "pending", "reasons"])
    return f"<div>{_title('Plan', plan.pipeline)}{table}</div>"
