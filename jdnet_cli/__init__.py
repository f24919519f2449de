"""jdnet: batch deraining with JDNet."""
import os

__version__ = "0.1.0"

# oneDNN's primitive cache and ideep's LRU cache keep compiled conv kernels keyed by tensor shape,
# 1024 entries each by default. A batch of differently sized images therefore grows RSS for
# thousands of images (benchmarks/soak.py: +47 MiB from image 50 to 1000, still rising). One image
# shape needs 14 entries, so 64 keeps the current image's shapes warm; a tiled image with more tile
# shapes than that recompiles a few kernels per tile, ~0.2 ms each against seconds per tile.
# Both capacities are read when the first conv runs; a value the user exported wins.
# Training sizes them up again (``training.size_kernel_caches_for_training``).
ONEDNN_CACHE_CAPACITY = "64"
ONEDNN_CACHE_VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY")
USER_ONEDNN_CACHE = {_name: os.environ.get(_name) for _name in ONEDNN_CACHE_VARIABLES}
for _name in ONEDNN_CACHE_VARIABLES:
    os.environ.setdefault(_name, ONEDNN_CACHE_CAPACITY)


def __getattr__(name: str):
    # The library API, ``from jdnet_cli import Derainer``, without importing torch for ``jdnet --help``.
    if name == "Derainer":
        from .inference.derainer import Derainer

        return Derainer
    raise AttributeError(f"module 'jdnet_cli' has no attribute {name!r}")
