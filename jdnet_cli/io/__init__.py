"""Files in and out: images, metadata, atomic writes, video."""
