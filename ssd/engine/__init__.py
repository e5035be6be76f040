"""Training loop, evaluation driver, checkpoints and benchmarks."""
