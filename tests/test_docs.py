"""Every Python block of the docs pages listed here runs, top to bottom, as one script."""

from __future__ import annotations

import pathlib
import re
import runpy

import pytest

DOCS = pathlib.Path(__file__).parent.parent / "docs"
PAGES = ["assets.md"]
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: pathlib.Path) -> str:
    return "\n\n".join(_BLOCK.findall(page.read_text()))


@pytest.mark.parametrize("page", PAGES)
def test_page_runs(page, tmp_path, monkeypatch):
    source = python_blocks(DOCS / page)
    assert source.strip(), f"{page} has no python blocks"
    # A real file, so that orca can read the source of the functions the page defines.
    script = tmp_path / f"doc_{page.replace('.', '_').replace('-', '_')}.py"
    script.write_text(source)
    monkeypatch.chdir(tmp_path)
    runpy.run_path(str(script), run_name="__main__")
