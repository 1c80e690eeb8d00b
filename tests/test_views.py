"""Notebook views, the pipeline graph (Mermaid, DOT, SVG) and progress bars' final counts."""

from __future__ import annotations

import html.parser
import importlib.util
import io
import subprocess
import sys
import xml.etree.ElementTree as ET

import polars as pl
import pytest
from tqdm.std import tqdm as text_bar

import orca
import orca.pipeline
from orca.graph import Graph, GraphNode

VOID = {"br", "hr", "img", "input", "meta", "link", "col", "area", "base", "wbr", "source", "track", "embed", "param"}


class Balance(html.parser.HTMLParser):
    """Checks that every opened tag is closed in order; collects the text."""

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.text: list[str] = []
        self.tags: set[str] = set()
        self.attrs: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.add(tag)
        self.attrs |= {name for name, _ in attrs}
        if tag not in VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.open and self.open[-1] == tag, (tag, self.open)
        self.open.pop()

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parse(markup: str) -> Balance:
    parser = Balance()
    parser.feed(markup)
    parser.close()
    assert parser.open == [], parser.open
    # No JavaScript: no script element, no event handler attribute, no javascript: link.
    assert "script" not in parser.tags and not any(a.startswith("on") for a in parser.attrs)
    assert "javascript:" not in markup.lower()
    return parser


@orca.function_pod(output_keys="y")
def inc(x: int) -> int:
    return x + 1


@orca.function_pod(output_keys="z")
def check(y: int) -> int:
    if y == 3:
        raise ValueError("y must not be <3>")
    return y


def build(store: orca.Store, rows: int = 6) -> orca.Pipeline:
    numbers = orca.DictSource([{"k": k, "x": k} for k in range(rows)], tags=["k"], source_id="numbers")
    extra = orca.DictSource([{"k": k, "w": "<b>&"} for k in range(rows)], tags=["k"], source_id="extra")
    pipe = orca.Pipeline("views", store=store)
    with pipe:
        check.pod(inc.pod(numbers).join(extra).filter(pl.col("k") >= 0))
    return pipe


@pytest.fixture(scope="module")
def ran() -> tuple[orca.Pipeline, orca.RunResult]:
    pipe = build(orca.MemoryStore())
    return pipe, pipe.run(progress=False, on_error="continue")


def test_graph_nodes_and_edges(ran: tuple[orca.Pipeline, orca.RunResult]) -> None:
    pipe, result = ran
    graph = pipe.graph(result)
    assert [(n.id, n.kind) for n in graph.nodes] == [
        ("source:numbers", "source"), ("source:extra", "source"), ("inc", "function"), ("join", "operator"),
        ("filter", "operator"), ("check", "function")]
    assert graph.edges == (("source:numbers", "inc"), ("inc", "join"), ("source:extra", "join"),
                           ("join", "filter"), ("filter", "check"))
    by_id = {n.id: n for n in graph.nodes}
    assert dict(by_id["check"].counts) == {"cached": 0, "computed": 5, "failed": 1}
    assert by_id["check"].status == "failed" and by_id["inc"].status == "succeeded"
    assert graph.annotation == f"run {result.run_id}: failed"
    # Without an argument: the pipeline's latest run, read back from its store's runs table.
    stored = pipe.graph()
    assert stored.nodes == graph.nodes and stored.annotation == graph.annotation
    planned = {n.id: dict(n.counts) for n in pipe.graph(pipe.plan()).nodes if n.kind == "function"}
    assert planned == {"inc": {"cached": 6, "to compute": 0}, "check": {"cached": 5, "to compute": 1}}
    with pytest.raises(TypeError, match="RunResult or a Plan"):
        pipe.graph("run-1")


def test_graph_renderings_name_every_node_and_edge(ran: tuple[orca.Pipeline, orca.RunResult]) -> None:
    graph = ran[0].graph(ran[1])
    ids = {n.id: f"n{i}" for i, n in enumerate(graph.nodes)}
    mermaid, dot = graph.to_mermaid(), graph.to_dot()
    for a, b in graph.edges:
        assert f"    {ids[a]} --> {ids[b]}" in mermaid.splitlines()
        assert f'    "{a}" -> "{b}";' in dot.splitlines()
    assert 'n5["check<br/>cached 0 · computed 5 · failed 1"]' in mermaid and "class n5 failed" in mermaid
    assert dot.startswith('digraph "views" {') and dot.endswith("}")

    svg = ET.fromstring(graph.to_svg())
    ns = {"s": "http://www.w3.org/2000/svg"}
    groups = svg.findall("s:g", ns)
    assert [g.find("s:title", ns).text for g in groups] == [f"{n.kind} {n.label}" for n in graph.nodes]
    assert [t.text for t in groups[-1].findall("s:text", ns)] == ["check", "cached 0 · computed 5 · failed 1"]
    assert len(svg.findall("s:path", ns)) == len(graph.edges)
    boxes = [tuple(float(g.find("s:rect", ns).get(k)) for k in ("x", "y", "width", "height")) for g in groups]
    for i, (x, y, w, h) in enumerate(boxes):  # no two boxes overlap
        for x2, y2, w2, h2 in boxes[i + 1:]:
            assert x + w <= x2 or x2 + w2 <= x or y + h <= y2 or y2 + h2 <= y


def test_graph_escapes_what_it_draws() -> None:
    graph = Graph('p"<&>', (GraphNode("a", "source", 'a"<&>'), GraphNode("b", "function", "b", (("n", 1),))),
                  (("a", "b"),))
    assert ET.fromstring(graph.to_svg()).find("{http://www.w3.org/2000/svg}g/{http://www.w3.org/2000/svg}text"
                                              ).text == 'a"<&>'
    assert 'n0[("a#quot;#lt;&#gt;")]' in graph.to_mermaid()
    assert '"a" [label="a\\"<&>"' in graph.to_dot() and graph.to_dot().startswith('digraph "p\\"<&>" {')
    assert ET.fromstring(Graph("empty", (), ()).to_svg()).tag.endswith("svg")


def test_html_views(ran: tuple[orca.Pipeline, orca.RunResult]) -> None:
    pipe, result = ran
    page = parse(pipe._repr_html_())
    text = " ".join(page.text)
    assert "svg" in page.tags and all(label in text for label in ("numbers", "extra", "inc", "join", "check"))
    assert "cached 0 · computed 5 · failed 1" in text

    run = parse(result._repr_html_())
    assert result.run_id in " ".join(run.text) and "ValueError" in run.text
    assert "y must not be <3>" in run.text  # escaped in the markup, read back as text
    assert "<3>" not in result._repr_html_()
    cells = run.text
    assert cells[cells.index("check"):cells.index("check") + 4] == ["check", "0", "5", "1"]

    plan = parse(pipe.plan()._repr_html_())
    assert plan.text[plan.text.index("check"):plan.text.index("check") + 6] == [
        "check", "6", "5", "1", "0", "previously failed: 1"]

    node = parse(pipe["inc"]._repr_html_())
    assert "inc" in node.text and "pipelines/views/inc" in node.text and pipe["inc"].pod.identity.hash in node.text

    source = pipe["join"].inputs[1]
    stream = parse(source._repr_html_())
    assert ["w", "packet", "large_string"] == stream.text[stream.text.index("w"):stream.text.index("w") + 3]
    assert "__tag__extra" in stream.text and "<b>&" in stream.text  # a value, escaped
    assert parse(pipe["filter"].output._repr_html_()).text.count("<b>&") == 5  # a preview of the head


def test_stream_view_of_a_failing_computation_says_why() -> None:
    source = orca.DictSource([{"k": 3, "y": 3}], tags=["k"], source_id="s")
    page = parse(check.pod(source)._repr_html_())  # a pod applied outside a pipeline: computed on collect
    assert any(t.startswith("(no preview: ") and "y must not be <3>" in t for t in page.text), page.text


def _captured_bars(monkeypatch: pytest.MonkeyPatch) -> io.StringIO:
    buffer = io.StringIO()

    class Bar(text_bar):  # the real text bar, drawn into a buffer even though it is not a terminal
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **{**kwargs, "file": buffer, "disable": kwargs.get("disable") is True})

    monkeypatch.setattr(orca.pipeline, "tqdm", Bar)
    return buffer


def _final_line(buffer: io.StringIO, label: str) -> str:
    return [part for part in buffer.getvalue().replace("\n", "\r").split("\r") if part.startswith(label)][-1]


def _assert_bars_show(buffer: io.StringIO, result: orca.RunResult) -> None:
    for label, c in result.counts.items():
        done = c.cached + c.computed + c.failed
        line = _final_line(buffer, label)
        assert f"{done}/{done}" in line and f"cached={c.cached}, computed={c.computed}, failed={c.failed}]" in line


@pytest.mark.parametrize("rows", [1, 400])
def test_progress_bars_end_on_the_run_counts(monkeypatch: pytest.MonkeyPatch, rows: int) -> None:
    buffer = _captured_bars(monkeypatch)
    pipe = build(orca.MemoryStore(), rows)
    first = pipe.run(on_error="continue")
    assert first.counts["inc"].computed == rows
    _assert_bars_show(buffer, first)
    buffer.seek(0)
    buffer.truncate()
    again = pipe.run(on_error="continue")  # all served from the store, but the failure (retried)
    assert again.counts["inc"].cached == rows
    _assert_bars_show(buffer, again)
    buffer.seek(0)
    buffer.truncate()
    pipe.run(on_error="continue", progress=False)
    assert buffer.getvalue() == ""


def test_text_bar_without_ipywidgets_and_no_warning_on_import() -> None:
    done = subprocess.run([sys.executable, "-W", "error", "-c", "import orca.pipeline as p; print(p.tqdm.__module__)"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    # tqdm.auto's notebook bar needs ipywidgets (and warns "IProgress not found" without it)
    expected = "tqdm.std" if importlib.util.find_spec("ipywidgets") is None else "tqdm."
    assert done.stdout.strip().startswith(expected)
