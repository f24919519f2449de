"""Jobs over many files: planning, running, reporting per file; image and video pipelines."""
