"""stylestream: models."""
