"""Side-by-side measurements against peer libraries. Run ``python -m benchmarks NAME`` or
``python -m benchmarks all``; every benchmark prints its ratios."""
