"""`vlstack demo`: the whole stack end to end on a tiny model, and every demo and quick recipe."""
