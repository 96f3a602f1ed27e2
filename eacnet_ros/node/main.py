"""Entry points of ``segment_node`` and ``segment_lifecycle_node``: own SIGINT and SIGTERM
from their first line.

Importing the node (rclpy, torch, OpenCV) takes seconds, and a launch shutdown or a
Ctrl-C may come at any moment of it. This module imports nothing heavy, installs the
handlers, and only then imports ``segment_node``; so a signal while importing, while the
model loads, at idle or while streaming ends the process with exit code 0.

rclpy's own handlers are not used (``SignalHandlerOptions.NO``): they shut the context
down under the executor (RCLError tracebacks, exit code 1) and cannot interrupt a load.
"""

from __future__ import annotations

import signal
import sys
from typing import Optional

from .process import SignalStop, Stopped


def main(args: Optional[list] = None) -> int:
    """``segment_node``."""
    return _main(args, managed=False)


def lifecycle_main(args: Optional[list] = None) -> int:
    """``segment_lifecycle_node``: the same node as a managed (lifecycle) node."""
    return _main(args, managed=True)


def _main(args: Optional[list], managed: bool) -> int:
    argv = list(sys.argv if args is None else args)
    try:
        with SignalStop().installed() as stop:
            try:
                if managed:
                    from .segment_lifecycle_node import run_managed as run
                else:
                    from .segment_node import run
            except Stopped:
                return 0
            return run(argv, stop)
    finally:
        _ignore_late_signals()


def _ignore_late_signals() -> None:
    """Once the node is torn down, the interpreter still has to unload torch, OpenCV and the
    middleware: seconds on a loaded machine. A launch that sent SIGINT sends SIGTERM after its
    timeout (5 s); with Python's default handler back in place, that killed a node which had
    already shut down cleanly (exit code -15 instead of 0). The work is done: ignore them."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
