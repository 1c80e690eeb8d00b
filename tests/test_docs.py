"""Every Python block of every docs page runs, top to bottom, as one script per page.

A page's ```python blocks are joined into one script written to a temp file (so that orca can
read the source of the functions the page defines) and run in a fresh temp directory. A block
made of ``>>>`` examples is run as a doctest inside that same script, so it sees what the blocks
before it defined and its printed output is checked. A block whose fence says
``title="not run: <reason>"`` (it needs a Ray cluster, object storage…) is skipped and counted;
``test_not_run_blocks_are_rare`` keeps them few. A block titled ``title="<name>.py"`` also goes
into that file (blocks with one title are appended in order), so the page's commands can load it.

The ``$ orca ...`` lines of the ```console blocks of ``CONSOLE_PAGES`` run after the page's
script, in its folder, against the store it made: each must exit 0, and each output line the
page shows must match a line of the real output (``...`` stands for anything).
"""

from __future__ import annotations

import doctest
import pathlib
import re
import runpy
import shlex
import subprocess
import sys

import pytest

DOCS = pathlib.Path(__file__).parent.parent / "docs"
_BLOCK = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.S | re.M)
_NOT_RUN = re.compile(r'title="not run: [^"]+"')
_FILE = re.compile(r'title="([\w.-]+\.py)"')
_CONSOLE = re.compile(r"^```console\n(.*?)^```", re.S | re.M)
CONSOLE_PAGES = ["tutorial.md"]
MAX_NOT_RUN = 8  # across the whole site


def blocks(page: pathlib.Path) -> list[tuple[str, str]]:
    """The page's python blocks as (fence attributes, code), in order."""
    return [(attrs.strip(), code) for attrs, code in _BLOCK.findall(page.read_text())]


def pages() -> list[str]:
    return sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md") if blocks(p))


def run_doctest_block(text: str, globs: dict, name: str) -> None:
    """Run one block of ``>>>`` examples in the script's globals; fail on any mismatch."""
    test = doctest.DocTestParser().get_doctest(text, globs, name, name, 0)
    test.globs = globs  # DocTest copies its globals; the next blocks must see these names
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test, clear_globs=False)
    if runner.failures:
        raise AssertionError(f"{name}: {runner.failures} doctest example(s) failed (see stdout)")


def script(page: str) -> tuple[str, int]:
    """The page as one Python script, and how many blocks it leaves out as not run."""
    parts, skipped = [], 0
    for n, (attrs, code) in enumerate(blocks(DOCS / page), start=1):
        if _NOT_RUN.search(attrs):
            skipped += 1
        elif code.lstrip().startswith(">>>"):
            name = f"{page} block {n}"
            parts.append(f"__run_doctest_block__({code!r}, globals(), {name!r})")
        else:
            parts.append(code)
    return "\n\n".join(parts), skipped


def write_files(page: str, folder: pathlib.Path) -> None:
    """Write the blocks titled ``<name>.py`` to those files (appended in page order)."""
    for attrs, code in blocks(DOCS / page):
        if match := _FILE.search(attrs):
            with open(folder / match.group(1), "a") as f:
                f.write(code + "\n\n")


def commands(page: str) -> list[tuple[str, list[str]]]:
    """The ``$ orca ...`` lines of the page's console blocks, each with the output it shows."""
    found: list[tuple[str, list[str]]] = []
    for block in _CONSOLE.findall((DOCS / page).read_text()):
        for line in block.splitlines():
            if line.startswith("$ "):
                found.append((line[2:], []))
            elif found:
                found[-1][1].append(line)
    return [(cmd, shown) for cmd, shown in found if cmd.startswith("orca ")]


def shown_line_pattern(line: str) -> re.Pattern:
    parts = [r"\s+".join(map(re.escape, piece.split())) for piece in line.split("...")]
    return re.compile(".*".join(parts))


def run_commands(page: str, folder: pathlib.Path) -> None:
    for command, shown in commands(page):
        argv = [sys.executable, "-m", "orca", *shlex.split(command)[1:]]
        done = subprocess.run(argv, cwd=folder, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{page}: `{command}` failed: {done.stderr}"
        real = done.stdout.splitlines()
        for line in shown:
            if line.strip() and line.strip() != "...":
                pattern = shown_line_pattern(line)
                assert any(pattern.search(r) for r in real), \
                    f"{page}: `{command}` printed no line like {line!r}:\n{done.stdout}"


@pytest.mark.parametrize("page", pages())
def test_page_runs(page, tmp_path, monkeypatch):
    source, _ = script(page)
    assert source.strip(), f"{page}: every python block is marked not run"
    path = tmp_path / f"doc_{re.sub(r'[^a-z0-9]', '_', page)}.py"
    path.write_text(source)
    write_files(page, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCA_STORE", raising=False)
    # Not "__main__": a page's script file (``work.py``) guards what only a worker runs.
    runpy.run_path(str(path), init_globals={"__run_doctest_block__": run_doctest_block},
                   run_name="docs_page")
    if page in CONSOLE_PAGES:
        assert commands(page), f"{page} shows no orca command"
        run_commands(page, tmp_path)


def test_not_run_blocks_are_rare():
    counts = {page: script(page)[1] for page in pages()}
    skipped = {page: n for page, n in counts.items() if n}
    print(f"python blocks not run: {sum(skipped.values())} {skipped}")
    assert sum(skipped.values()) <= MAX_NOT_RUN, skipped


def test_every_python_fence_is_recognised():
    # A fence the runner does not parse (```py, ```python3, a missing newline) would silently
    # not run; only ```python blocks and non-Python fences are allowed.
    for page in DOCS.rglob("*.md"):
        for line in page.read_text().splitlines():
            if line.startswith("```py"):
                assert re.match(r"^```python( .*)?$", line), f"{page}: unrecognised fence {line!r}"
