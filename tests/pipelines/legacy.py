"""The pipeline whose store, written by orca before ids were stored as 16 bytes (table format
"1": ids as hex text), is kept in ``tests/fixtures/legacy_store`` (see ``test_legacy_store.py``).

Made with the orca of commit 68272bc (from outside the repo, so that its ``orca`` is imported)::

    git worktree add --detach /tmp/orca-old 68272bc && mkdir /tmp/oldorca && ln -s /tmp/orca-old/orca /tmp/oldorca/
    cd /tmp && python -c "import sys; sys.path[:0] = ['/tmp/oldorca', '/work/main']; \\
        import tests.pipelines.legacy as m; m.generate('/work/main/tests/fixtures/legacy_store')"
"""

from __future__ import annotations

import polars as pl

import orca


@orca.function_pod(output_keys="y")
def double(x: int) -> int:
    if x == 3:
        raise ValueError("three is refused")
    return 2 * x


@orca.function_pod(output_keys="z")
def inc(y: int) -> int:
    return y + 1


def source(n: int) -> orca.Source:
    return orca.PolarsSource(pl.DataFrame({"id": list(range(n)), "x": [i % 4 for i in range(n)]}),
                             tags=["id"], source_id="numbers")


def build(store: orca.Store, n: int = 6) -> orca.Pipeline:
    pipeline = orca.Pipeline("legacy", store=store)
    with pipeline:
        inc.pod(double.pod(source(n)))
    return pipeline


def generate(path: str) -> None:
    """Two runs with a failure and an invalidation in between."""
    built = build(orca.DeltaStore(path))
    built.run(on_error="continue", progress=False)
    built.invalidate("inc", pl.col("id") == 1)  # an invalidated row in a legacy table
    built.run(on_error="continue", progress=False)
