"""Small pipelines that tests run in separate processes (importable by spawned children)."""
