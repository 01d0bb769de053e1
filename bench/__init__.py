"""Benchmarks: each module prints its figures and ratios against a baseline measured in the same
run. `python -m bench` runs them all; `python -m bench jobs` runs the named ones."""
