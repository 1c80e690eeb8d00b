"""Join recordings with subject metadata, keep the adult subjects, print the result.

Run: ``python examples/join_pipeline.py``
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

# Inner join on the shared tag "subject", then a Polars filter over tag and packet columns.
adults = recordings.join(subjects).filter(pl.col("age_weeks") >= 8)

if __name__ == "__main__":
    print(adults)
    print(adults.to_polars())
    # Provenance: each packet column names the source row its value came from.
    print(adults.to_polars(include_system=True).select("subject", "session", "__source__trace_mean",
                                                      "__source__genotype"))
