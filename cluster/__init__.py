"""Ray actors, the coordinator and sweeps that distribute the `scaling` engine (later issues).

Only this package imports Ray; `model` and `scaling` never do.
"""
