"""The documentation site builds with warnings as errors, and renders in a real browser.

`mkdocs build --strict` (MkDocs Material + mkdocstrings, `mkdocs.yml`) builds into a temporary
folder; headless Chromium then loads the built pages from `file://` URLs, dumps their DOM
and takes screenshots (kept in the test's temporary folder, and copied to `$ORCA_DOCS_SHOTS`
when that is set, to look at them). The browser tests skip, saying why, when no Chromium is
installed (`apt-get install chromium`; `.ci/run` installs it).
"""

from __future__ import annotations

import html
import importlib.util
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parent.parent
NAV = ["Home", "Tutorial", "How-to guides", "Concepts", "Reference", "Python API", "Command line",
       "Errors", "Performance", "Files as data", "Many processes on one store", "Object storage",
       "Guarantees (concurrency, crashes)", "Store tables and columns"]


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-4000:]}"
    return out


def test_the_site_builds_strictly_with_every_page(site):
    for page in ["index.html", "tutorial.html", "reference/api.html", "reference/cli.html",
                 "reference/errors.html", "performance.html", "how-to/ray.html",
                 "concepts/guarantees.html", "operators.html"]:
        assert (site / page).is_file(), page
    index = (site / "search" / "search_index.json").read_text()
    assert "GlobSource" in index and "Tutorial" in index


def test_every_cli_command_is_in_the_reference(site):
    from orca.cli import main

    page = (site / "reference" / "cli.html").read_text()
    for name in main.commands:
        assert f"orca {name}" in page, name


def test_every_public_name_is_in_the_api_reference(site):
    import orca

    page = (site / "reference" / "api.html").read_text()
    errors = (site / "reference" / "errors.html").read_text()
    for name in orca.__all__:
        assert f'id="orca.{name}"' in page or f'id="orca.errors.{name}"' in errors, name


def _griffe_extension():
    spec = importlib.util.spec_from_file_location("griffe_doctests", ROOT / "docs/reference/griffe_doctests.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_doctests_in_docstrings_are_fenced_once():
    ext = _griffe_extension()
    text = "Text.\n\n    >>> f(1)\n    2\n    >>> g()\n\nMore.\n\n```python\n>>> kept\n```"
    assert ext.fence_doctests(text).splitlines() == [
        "Text.", "", "    ```pycon", "    >>> f(1)", "    2", "    >>> g()", "    ```", "",
        "More.", "", "```python", ">>> kept", "```"]
    assert ext.plain_roles(":meth:`Pipeline.run`") == "`Pipeline.run`"


# --- in a browser -------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
browser = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install chromium)")


def _chromium(*args: str) -> subprocess.CompletedProcess:
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
            "--no-first-run", "--hide-scrollbars", *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


_DOMS: dict[tuple[pathlib.Path, str], str] = {}


def dom(site: pathlib.Path, page: str) -> str:
    """The page's DOM after Chromium loaded it and ran its scripts (once per page)."""
    if (site, page) not in _DOMS:
        done = _chromium("--virtual-time-budget=2000", "--dump-dom", (site / page).as_uri())
        assert done.returncode == 0 and "<body" in done.stdout, done.stderr[-2000:]
        _DOMS[site, page] = done.stdout
    return _DOMS[site, page]


def visible_text(markup: str) -> str:
    """The page's prose: no scripts, styles, code blocks or inline code, tags removed."""
    markup = re.sub(r"<(script|style|pre|code)\b.*?</\1>", " ", markup, flags=re.S)
    return html.unescape(re.sub(r"<[^>]+>", " ", markup))


@browser
@pytest.mark.parametrize("page", ["index.html", "tutorial.html", "reference/api.html",
                                  "how-to/failures.html"])
def test_pages_render_nav_search_and_code(site, page):
    markup = dom(site, page)
    nav = re.search(r'<nav class="md-nav md-nav--primary".*?</nav>\s*</div>\s*</div>\s*</div>',
                    markup, re.S) or re.search(r'<nav class="md-nav md-nav--primary".*', markup, re.S)
    nav_text = " ".join(visible_text(nav.group(0)).split())
    for entry in NAV:
        assert entry in nav_text, f"{page}: nav has no {entry!r}"
    assert re.search(r'<input[^>]+class="md-search__input"', markup), f"{page}: no search input"
    blocks = re.findall(r'<div class="(?:language-[\w-]+ )?highlight">(.*?)</div>', markup, re.S)
    assert blocks, f"{page}: no highlighted code block"
    assert all("<pre" in b and "<code" in b for b in blocks)
    assert re.search(r'<span class="(k|kn|nf|s2|mi)">', markup), f"{page}: code is not highlighted"
    prose = visible_text(markup)
    for raw in ("```", "**", "]("):
        assert raw not in prose, f"{page}: raw Markdown {raw!r} in the text"
    assert "::: " not in prose, f"{page}: an unrendered mkdocstrings directive"


@browser
def test_api_reference_has_the_main_sections(site):
    markup = dom(site, "reference/api.html")
    for name in ["Pipeline", "function_pod", "DeltaStore", "GlobSource", "RunResult", "RayExecutor"]:
        assert f'id="orca.{name}"' in markup, name
    assert 'id="orca.Pipeline.run"' in markup and 'id="orca.Pipeline.lineage"' in markup
    assert "md-typeset__table" in markup  # parameter tables
    # docstring examples are code blocks, never '>>>' read as nested block quotes
    assert "<blockquote>\n<blockquote>" not in markup


@browser
@pytest.mark.parametrize("page", ["tutorial.html", "reference/api.html"])
def test_screenshots(site, page, tmp_path):
    shot = tmp_path / (page.replace("/", "_").replace(".html", ".png"))
    done = _chromium(f"--screenshot={shot}", "--window-size=1280,1600", "--virtual-time-budget=3000",
                     (site / page).as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 60_000, f"{page}: the screenshot is nearly empty ({len(data)} bytes)"
    if os.environ.get("ORCA_DOCS_SHOTS"):
        folder = pathlib.Path(os.environ["ORCA_DOCS_SHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, folder / shot.name)
