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
    with SignalStop().installed() as stop:
        try:
            if managed:
                from .segment_lifecycle_node import run_managed as run
            else:
                from .segment_node import run
        except Stopped:
            return 0
        return run(argv, stop)


if __name__ == "__main__":
    sys.exit(main())
