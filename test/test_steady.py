"""eacnet_ros.node.steady: the process-level settings that keep a long-running node steady."""

from __future__ import annotations

import gc
import subprocess
import sys

import pytest

from eacnet_ros.node import steady


def test_freeze_exempts_what_exists_now_from_collections():
    gc.unfreeze()
    try:
        steady.freeze_long_lived()
        assert gc.get_freeze_count() > 1000  # this process's imports at least
    finally:
        gc.unfreeze()


#: In a fresh process: free a 4 MiB block, then ask for a 512 KiB one, and print whether glibc
#: mapped it on its own (bit 0x2 of the chunk's size field, just before the block). A freed
#: mapped block raises glibc's dynamic threshold past it, so without the fixed threshold the
#: second block comes from the heap. (In a long-lived process a block can come from free heap
#: memory either way, hence a fresh one.)
PROBE = """
import ctypes, sys
from eacnet_ros.node import steady
if sys.argv[1] == "steady":
    assert steady.steady_allocator() is True
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.free(libc.malloc(4 * 1024 * 1024))
block = libc.malloc(512 * 1024)
print(ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value & 0x2)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_steady_allocator_maps_frame_sized_blocks_on_their_own():
    def mapped(mode: str) -> bool:
        done = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip() == "2"

    assert mapped("steady") and not mapped("default")
