"""Training data: paired folders, synthetic rain, patch streams."""
