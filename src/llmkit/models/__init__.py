"""Models: presets, building from scratch, safe loading, saving with lineage."""
