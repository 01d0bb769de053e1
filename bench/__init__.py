"""Benchmarks (`make bench`, i.e. `python -m bench [name ...]`); each prints ratios against a
baseline measured in the same run."""
