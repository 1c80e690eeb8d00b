"""A picture of a pipeline: its nodes and edges as a small frozen value, drawn as Mermaid, DOT or SVG.

:func:`pipeline_graph` walks ``pipeline.nodes``: every function node and operator node is a
node; a stream whose producer is a :class:`~orca.sources.Source` is a source node (one per
``source_id``); an edge goes from whatever made a node's input stream to the node. Each function
node may carry counts -- from a run result, a plan, or the latest run of the pipeline in its
store's ``runs`` table -- shown on the drawing.

The SVG is laid out here, with no system binary: a node's layer is its longest path from a
source, nodes in a layer are ordered by the mean position of their parents (one sweep, which
undoes most crossings in the small graphs pipelines are), edges are Bézier curves.

>>> import orca
>>> @orca.function_pod(output_keys="y")
... def inc(x: int) -> int:
...     return x + 1
>>> pipe = orca.Pipeline("demo", store=orca.MemoryStore())
>>> with pipe:
...     _ = inc.pod(orca.DictSource([{"k": 1, "x": 1}], tags=["k"], source_id="numbers"))
>>> g = pipe.graph()
>>> [(n.kind, n.label) for n in g.nodes], g.edges
([('source', 'numbers'), ('function', 'inc')], (('source:numbers', 'inc'),))
>>> print(g.to_mermaid())
flowchart TD
    n0[("numbers")]
    n1["inc"]
    n0 --> n1
"""

from __future__ import annotations

import dataclasses
import datetime
import html
from collections.abc import Mapping
from typing import Any, Literal

import polars as pl

from orca.engine import Counts, NodeSpec
from orca.names import RUNS
from orca.plan import Plan
from orca.runs import run_status
from orca.sources import Source
from orca.stores import Store

__all__ = ["Graph", "GraphNode", "pipeline_graph"]

Kind = Literal["source", "operator", "function"]


@dataclasses.dataclass(frozen=True)
class GraphNode:
    """One node of a pipeline's picture.

    ``id`` is unique in the graph (a node's label; ``source:<source id>`` for a source);
    ``counts`` are (name, value) pairs in display order, e.g. cached / computed / failed after a
    run, cached / to compute / pending for a plan; ``status`` is the node's status in that run
    (``succeeded``, ``failed``) or plan (``up to date``, ``to compute``), if known.
    """

    id: str
    kind: Kind
    label: str
    counts: tuple[tuple[str, int], ...] = ()
    status: str | None = None

    def counts_text(self) -> str:
        return " · ".join(f"{name} {value}" for name, value in self.counts)


@dataclasses.dataclass(frozen=True)
class Graph:
    """A pipeline's nodes (sources first, then in recording order) and edges (``(from id, to id)``).

    ``annotation`` says where the counts come from (``run <id>: <status>``, ``plan``), or is
    None when the graph carries no counts.
    """

    pipeline: str
    nodes: tuple[GraphNode, ...]
    edges: tuple[tuple[str, str], ...]
    annotation: str | None = None

    def to_mermaid(self) -> str:
        """Mermaid flowchart text (sources as cylinders, operators as hexagons)."""
        ids = {n.id: f"n{i}" for i, n in enumerate(self.nodes)}
        shapes = {"source": ('[("', '")]'), "operator": ('{{"', '"}}'), "function": ('["', '"]')}
        lines = ["flowchart TD"]
        for node in self.nodes:
            text = _mermaid_text(node.label) + (f"<br/>{_mermaid_text(node.counts_text())}" if node.counts else "")
            start, end = shapes[node.kind]
            lines.append(f"    {ids[node.id]}{start}{text}{end}")
        lines += [f"    {ids[a]} --> {ids[b]}" for a, b in self.edges]
        failed = [ids[n.id] for n in self.nodes if n.status == "failed"]
        if failed:
            lines += ["    classDef failed stroke:#c0392b,stroke-width:2px", f"    class {','.join(failed)} failed"]
        return "\n".join(lines)

    def to_dot(self) -> str:
        """Graphviz DOT text (render with ``dot -Tpng``; orca itself never needs Graphviz)."""
        lines = [f"digraph {_dot_string(self.pipeline)} {{", "    rankdir=TB;",
                 '    node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=11];']
        for node in self.nodes:
            text = node.label + (f"\n{node.counts_text()}" if node.counts else "")
            attrs = [f"label={_dot_string(text)}", f'fillcolor="{_FILL[node.kind]}"']
            if node.kind == "source":
                attrs.append("shape=cylinder")
            elif node.kind == "operator":
                attrs.append("shape=hexagon")
            if node.status == "failed":
                attrs.append(f'color="{_FAILED}", penwidth=2')
            lines.append(f"    {_dot_string(node.id)} [{', '.join(attrs)}];")
        lines += [f"    {_dot_string(a)} -> {_dot_string(b)};" for a, b in self.edges]
        return "\n".join([*lines, "}"])

    def to_svg(self) -> str:
        """A standalone SVG drawing (valid XML; no scripts), laid out top to bottom."""
        boxes, width, height = self._layout()
        out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
               f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" font-size="12">',
               f"<title>{html.escape(f'pipeline {self.pipeline}')}</title>",
               '<defs><marker id="orca-arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="7" '
               'markerHeight="7" orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#555"/>'
               "</marker></defs>"]
        for a, b in self.edges:
            (ax, ay, aw, ah), (bx, by, bw, _) = boxes[a], boxes[b]
            x1, y1, x2, y2 = ax + aw / 2, ay + ah, bx + bw / 2, by
            mid = (y1 + y2) / 2
            out.append(f'<path d="M {x1:.1f} {y1:.1f} C {x1:.1f} {mid:.1f}, {x2:.1f} {mid:.1f}, {x2:.1f} {y2:.1f}" '
                       'fill="none" stroke="#555" stroke-width="1.2" marker-end="url(#orca-arrow)"/>')
        for node in self.nodes:
            x, y, w, h = boxes[node.id]
            stroke = _FAILED if node.status == "failed" else "#666"
            radius = 14 if node.kind == "source" else 6
            out.append(f'<g class="orca-{node.kind}"><title>{html.escape(f"{node.kind} {node.label}")}</title>'
                       f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="{radius}" fill="{_FILL[node.kind]}" '
                       f'stroke="{stroke}" stroke-width="{2 if node.status == "failed" else 1}"/>')
            cx = x + w / 2
            if node.counts:
                out.append(f'<text x="{cx:.1f}" y="{y + 18}" text-anchor="middle" font-weight="bold">'
                           f"{html.escape(node.label)}</text>")
                out.append(f'<text x="{cx:.1f}" y="{y + 35}" text-anchor="middle" font-size="11" fill="#333">'
                           f"{html.escape(node.counts_text())}</text>")
            else:
                out.append(f'<text x="{cx:.1f}" y="{y + h / 2 + 4:.1f}" text-anchor="middle" font-weight="bold">'
                           f"{html.escape(node.label)}</text>")
            out.append("</g>")
        return "\n".join([*out, "</svg>"])

    def _layout(self) -> tuple[dict[str, tuple[float, float, float, float]], int, int]:
        """Each node's box (x, y, width, height) and the drawing's size."""
        parents: dict[str, list[str]] = {n.id: [] for n in self.nodes}
        for a, b in self.edges:
            parents[b].append(a)
        layer: dict[str, int] = {}
        for node in self.nodes:  # nodes come in dependency order: parents are placed first
            layer[node.id] = 1 + max((layer[p] for p in parents[node.id]), default=-1)
        for node in self.nodes:  # a source sits just above its first reader (short edges cross less)
            readers = [layer[b] for a, b in self.edges if a == node.id]
            if not parents[node.id] and readers:
                layer[node.id] = min(readers) - 1
        layers: list[list[str]] = [[] for _ in range(max(layer.values(), default=-1) + 1)]
        for node in self.nodes:
            layers[layer[node.id]].append(node.id)
        sizes = {n.id: (max(60.0, 7.0 * max(len(n.label), len(n.counts_text()) * 0.9) + 24),
                        46.0 if n.counts else 30.0) for n in self.nodes}
        position: dict[str, float] = {}
        for row in layers:  # order by the mean position of the parents, keeping recording order on ties
            row.sort(key=lambda i: sum(position[p] for p in parents[i]) / len(parents[i]) if parents[i] else -1.0)
            position.update({i: k for k, i in enumerate(row)})
        gap_x, gap_y, margin = 24.0, 48.0, 12.0
        widths = [sum(sizes[i][0] for i in row) + gap_x * (len(row) - 1) for row in layers]
        width = max(widths, default=0.0) + 2 * margin
        boxes, y = {}, margin
        for row, row_width in zip(layers, widths, strict=True):
            x = (width - row_width) / 2
            row_height = max(sizes[i][1] for i in row)
            for i in row:
                w, h = sizes[i]
                boxes[i] = (round(x, 1), round(y + (row_height - h) / 2, 1), round(w, 1), h)
                x += w + gap_x
            y += row_height + gap_y
        return boxes, int(width + 0.5), int(y - gap_y + margin + 0.5)


_FILL = {"source": "#dbeafe", "operator": "#eeeeee", "function": "#fef3c7"}
_FAILED = "#c0392b"


def _mermaid_text(text: str) -> str:
    # Mermaid reads "#...;" as an entity: quotes and the markup characters are spelled that way.
    return "".join({'"': "#quot;", "<": "#lt;", ">": "#gt;", "#": "#35;"}.get(c, c) for c in text)


def _dot_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


# ---- building the graph of a pipeline -----------------------------------------------------------
def pipeline_graph(name: str, nodes: Mapping[str, Any], store: Store, annotate: Any = None) -> Graph:
    """The graph of pipeline ``name`` whose nodes are ``nodes`` (``pipeline.nodes``).

    ``annotate``: a :class:`~orca.plan.Plan`, a run result (anything with ``run_id``, ``status``
    and ``counts``: label -> :class:`~orca.engine.Counts`), or None to read the latest run of
    the pipeline from ``store`` (no counts if it has none).
    """
    found: dict[str, GraphNode] = {}
    edges: list[tuple[str, str]] = []
    specs = {node.spec: label for label, node in nodes.items() if hasattr(node, "spec")}
    outputs = {id(node.output): label for label, node in nodes.items() if not hasattr(node, "spec")}
    sources: dict[str, GraphNode] = {}

    def origin(stream: Any) -> str:
        producer = stream.producer
        if isinstance(producer, NodeSpec) and producer in specs:
            return specs[producer]
        if id(stream) in outputs:
            return outputs[id(stream)]
        if isinstance(producer, Source):
            key = f"source:{producer.source_id}"
            sources.setdefault(key, GraphNode(key, "source", producer.source_id))
        else:  # made outside the pipeline (an operator applied before `with pipeline:`): where rows enter
            key = f"stream:{stream.identity[:12]}"
            sources.setdefault(key, GraphNode(key, "source", f"{type(producer).__name__.lower()} (outside)"))
        return key

    for label, node in nodes.items():
        is_function = hasattr(node, "spec")
        inputs = (node.input,) if is_function else node.inputs
        edges += [(origin(stream), label) for stream in inputs]
        found[label] = GraphNode(label, "function" if is_function else "operator", label)
    counts, annotation = _annotation(name, store, annotate)
    for label, (values, status) in counts.items():
        if label in found and found[label].kind == "function":
            found[label] = dataclasses.replace(found[label], counts=values, status=status)
    return Graph(name, (*sources.values(), *found.values()), tuple(dict.fromkeys(edges)), annotation)


_NodeCounts = dict[str, tuple[tuple[tuple[str, int], ...], str | None]]


def _annotation(name: str, store: Store, annotate: Any) -> tuple[_NodeCounts, str | None]:
    if isinstance(annotate, Plan):
        return {label: ((("cached", p.cached), ("to compute", p.to_compute), *((("pending", p.pending),)
                                                                             if p.pending else ())),
                        "to compute" if p.to_compute or p.pending else "up to date")
                for label, p in annotate.items()}, "plan"
    if annotate is not None:
        if not isinstance(getattr(annotate, "counts", None), Mapping):
            raise TypeError(f"graph() takes a RunResult or a Plan, got {type(annotate).__name__}")
        return ({label: (_run_counts(c), "failed" if c.failed else "succeeded")
                 for label, c in annotate.counts.items()}, f"run {annotate.run_id}: {annotate.status}")
    return _latest_run(name, store)


def _run_counts(c: Counts) -> tuple[tuple[str, int], ...]:
    return ("cached", c.cached), ("computed", c.computed), ("failed", c.failed)


def _latest_run(name: str, store: Store) -> tuple[_NodeCounts, str | None]:
    """Per node, the counts the pipeline's latest run in ``store`` finished it with."""
    runs = store.scan(RUNS)
    if runs is None:
        return {}, None
    events = runs.filter(pl.col("pipeline") == name).collect()
    if events.height == 0:
        return {}, None
    run_id = events.sort("started_at", "seq")["run_id"][-1]
    run = events.filter(pl.col("run_id") == run_id).sort("seq")
    finished = run.filter((pl.col("event") == "node_finished") & pl.col("node").is_not_null())
    counts = {row["node"]: (tuple((k, int(row[k] or 0)) for k in ("cached", "computed", "failed")), row["status"])
              for row in finished.iter_rows(named=True)}
    status = run_status(run, datetime.datetime.now(datetime.UTC))
    return counts, f"run {run_id}: {status}"
