"""Benchmarks that print numbers: `python -m vlaflow.bench.<name> --help`."""
