"""stylestream: benchmarks."""
