"""stylestream: export."""
