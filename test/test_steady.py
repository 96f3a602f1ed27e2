"""eacnet_ros.node.steady: the process-level settings that keep a long-running node steady."""

from __future__ import annotations

import ctypes
import gc
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


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_steady_allocator_fixes_glibc_mmap_threshold():
    assert steady.steady_allocator() is True
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # glibc raises a dynamic threshold past any mapped block that is freed: without the fixed
    # one, the next 512 KiB block would come from the heap. Bit 0x2 of a chunk's size field
    # (just before the block) marks a chunk mapped on its own.
    libc.free(libc.malloc(4 * 1024 * 1024))
    block = libc.malloc(4 * steady.MMAP_THRESHOLD)
    try:
        assert ctypes.c_size_t.from_address(block - ctypes.sizeof(ctypes.c_size_t)).value & 0x2
    finally:
        libc.free(block)
