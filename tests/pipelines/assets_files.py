"""A two-node pipeline over files, run by tests/test_assets.py (also in spawned processes)."""

from __future__ import annotations

import pathlib

import orca


@orca.function_pod(output_keys="n")
def size(path: pathlib.Path) -> int:
    return len(path.read_text())


@orca.function_pod(output_keys="m")
def double(n: int) -> int:
    return 2 * n


def build(store: orca.Store, folder: str | pathlib.Path) -> orca.Pipeline:
    pipeline = orca.Pipeline("files", store=store)
    with pipeline:
        double.pod(size.pod(orca.GlobSource(str(pathlib.Path(folder) / "{name}.txt"))))
    return pipeline


def run(store_path: str, folder: str) -> None:
    """Run the pipeline on a Delta store (an entry point for spawned processes)."""
    build(orca.DeltaStore(store_path), folder).run(progress=False)
