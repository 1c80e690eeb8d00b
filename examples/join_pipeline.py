"""Join recordings with subject metadata, then run a function pod on the joined rows.

Each output row traces back to the recording row *and* the subject row its inputs came from.

Run: ``python examples/join_pipeline.py`` (store: ``$ORCA_STORE`` or ``./.orca``)
"""

import polars as pl

import orca

recordings = orca.DictSource(
    [
        {"subject": "m1", "session": 1, "trace_mean": 0.52},
        {"subject": "m1", "session": 2, "trace_mean": 0.71},
        {"subject": "m2", "session": 1, "trace_mean": 1.48},
        {"subject": "m3", "session": 1, "trace_mean": 0.93},
    ],
    tags=["subject", "session"],
    source_id="recordings",
)
subjects = orca.DictSource(
    [
        {"subject": "m1", "age_weeks": 12, "genotype": "wt"},
        {"subject": "m2", "age_weeks": 6, "genotype": "ko"},
        {"subject": "m3", "age_weeks": 20, "genotype": "ko"},
    ],
    tags=["subject"],
    source_id="subjects",
)


@orca.function_pod(output_keys="trace_per_week")
def per_week(trace_mean: float, age_weeks: int) -> float:
    """Normalise a recording's mean trace by the subject's age."""
    return trace_mean / age_weeks


def main() -> None:
    pipeline = orca.Pipeline("join_example")
    with pipeline:
        # Inner join on the shared tag "subject", then a Polars filter over tags and packets.
        adults = recordings.join(subjects).filter(pl.col("age_weeks") >= 8)
        per_week.pod(adults)
    result = pipeline.run(progress=False)
    print("nodes:", list(pipeline.nodes), "| counts:", result.counts["per_week"])
    print(pipeline["per_week"].results().collect())
    # Provenance: for each input column, the source row its value came from.
    print(pipeline["per_week"].provenance().select(
        "subject", "session", "__source__trace_mean", "__source__age_weeks", "__record_id"
    ).sort("subject", "session").collect())


if __name__ == "__main__":
    main()
