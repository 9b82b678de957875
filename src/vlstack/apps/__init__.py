"""Applications on top of the inference Engine: medical imaging, industrial inspection, embodied agents."""
