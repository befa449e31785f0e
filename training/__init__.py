"""stylestream: training."""
