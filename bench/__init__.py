"""Throughput benchmarks (not part of the installed package): ``python bench/bench_<name>.py``."""
