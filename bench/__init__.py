"""chatd benchmarks: `python -m bench` (run by scripts/bench)."""
