"""stylestream: realtime."""
