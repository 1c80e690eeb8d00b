"""orca quick start: files on disk -> two function pods -> results as a Polars frame.

Run it twice: the second run serves every row from the store (``.orca`` in the current
directory, or ``$ORCA_STORE``) and computes nothing.

    python examples/quickstart.py
"""

from __future__ import annotations

import pathlib
import random

import orca

DATA = pathlib.Path(__file__).parent / "data" / "quickstart"


def make_recordings() -> None:
    """Write a few small 'recordings' (one number per line) if they are not there yet."""
    rng = random.Random(0)
    for subject in ("m1", "m2", "m3"):
        for session in ("s1", "s2"):
            path = DATA / subject / f"{session}.txt"
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("\n".join(f"{rng.gauss(10, 3):.3f}" for _ in range(1_000)))


@orca.function_pod(output_keys=["n", "mean"])
def summarise(path: pathlib.Path) -> tuple[int, float]:
    """Count and average the values of one recording file."""
    values = [float(line) for line in path.read_text().split()]
    return len(values), sum(values) / len(values)


@orca.function_pod(output_keys="grade")
def grade(mean: float) -> str:
    """Grade a recording by its mean."""
    return "high" if mean > 10 else "low"


def build() -> orca.Pipeline:
    """The pipeline: recordings -> summarise -> grade, on the default store."""
    make_recordings()
    pipeline = orca.Pipeline("quickstart")
    with pipeline:
        recordings = orca.GlobSource(str(DATA / "{subject}" / "{session}.txt"), source_id="recordings")
        stats = summarise.pod(recordings)
        grade.pod(stats)
    return pipeline


# At module level, so that `orca plan examples/quickstart.py` and `orca graph` find it (they run
# this file's top level, not its __main__ block).
pipeline = build()


def main() -> None:
    result = pipeline.run(progress=False)
    for label, counts in result.counts.items():
        print(f"{label:>10}: {counts.cached} cached, {counts.computed} computed, {counts.failed} failed")
    stats_frame = pipeline.asset("summarise").collect()
    grades = pipeline.asset("grade").collect()
    print(stats_frame.join(grades.select("subject", "session", "grade"), on=["subject", "session"])
          .select("subject", "session", "n", "mean", "grade").sort("subject", "session"))


if __name__ == "__main__":
    main()
