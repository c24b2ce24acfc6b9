"""Ray shard workers and the coordinator that distribute the `scaling` engine, and the
`scaling` command's entry point (which adds `--workers` to `scaling fit`).

Only this package imports Ray; `model` and `scaling` never do.
"""
