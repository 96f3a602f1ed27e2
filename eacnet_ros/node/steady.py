"""What keeps a long-running node's latency and memory steady; ROS-free.

* ``freeze_long_lived``: the imports (rclpy, torch, OpenCV, OpenVINO) and the loaded model
  leave ~210,000 objects that Python's cyclic garbage collector tracks; a full collection
  walks all of them: 225-275 ms on our 2-core CPU (under load), on whichever thread happens
  to allocate then - the worker in the middle of a frame, or the executor taking one. They
  live as long as the process, so once the node is built (``segment_node.run``) they are
  moved out of the collector's sight (``gc.freeze``): a full collection then took under
  0.1 ms. Instant, so no frame waits for it (a ``gc.collect`` first would take those
  225-275 ms). Only the process does this, never a node embedded in another program; a
  managed node's model, loaded later by configure, stays collectable.
* ``steady_allocator``: glibc raises its mmap threshold past every mapped block that is
  freed (up to 32 MiB), and its trim threshold with it: after the first frames, frame-sized
  blocks (a 480x360 bgr8 frame is 518 KB) come from the heaps of the threads that allocate
  them, and freed heap memory is kept rather than returned. A fixed threshold stops both
  from moving: a block of ``MMAP_THRESHOLD`` or more that free heap memory cannot serve is
  mapped on its own and unmapped when freed, and heap tops over 128 KiB go back to the OS.
  Memory is then what the process uses, not its high-water mark (docs/RESULTS.md, "Hours of
  load", has the soak figures with and without).
"""

from __future__ import annotations

import ctypes
import functools
import gc
from typing import Optional

#: Blocks of this size or more are mapped on their own (a mono8 480x360 mask is 169 KiB).
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number


def freeze_long_lived() -> None:
    """Exempt every object alive now from future garbage collections."""
    gc.freeze()


def steady_allocator(threshold: int = MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold; False where there is no glibc (nothing changes then)."""
    mallopt = _mallopt()
    return bool(mallopt is not None and mallopt(_M_MMAP_THRESHOLD, threshold))


@functools.cache
def _mallopt() -> Optional[ctypes._CFuncPtr]:
    try:
        function = getattr(ctypes.CDLL(None), "mallopt", None)
    except (OSError, TypeError):  # no C library to open this way
        return None
    if function is not None:
        function.argtypes, function.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return function
