"""Applications on top of the inference Engine: medical imaging (DICOM, de-identification), industrial
inspection, point clouds, embodied agents."""
