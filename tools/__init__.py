"""Developer benchmarks (run from a checkout: `python -m tools.bench_<name>`); not installed."""
