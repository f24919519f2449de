"""glibc allocator settings for CPU inference."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest


from ..conftest import REPO


_ALLOCATOR_PROBE = """
import sys, numpy as np
from jdnet_cli.inference.cpu_allocator import keep_freed_memory
def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
if sys.argv[1] == "keep":
    assert keep_freed_memory() and keep_freed_memory()
a = np.ones(64 * 2**20, np.uint8)  # 64 MiB, touched
before_free = rss_mib()
del a
print(before_free - rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings")
def test_keep_freed_memory_keeps_large_blocks_for_reuse():
    """With the setting a freed 64 MiB tensor stays mapped for the next pass; without it, it is unmapped."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    released = {mode: float(subprocess.run([sys.executable, "-c", _ALLOCATOR_PROBE, mode], env=env, capture_output=True,
                                           text=True, check=True).stdout) for mode in ("default", "keep")}
    assert released["default"] > 60
    assert released["keep"] < 4
