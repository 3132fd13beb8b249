"""Benchmarks; run each as a module from the repo root, e.g. ``python -m bench.bench_preprocess``."""
