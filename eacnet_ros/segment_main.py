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

import contextlib
import signal
import sys
from collections.abc import Iterator
from typing import Any, Optional


class Stopped(BaseException):
    """Raised by the signal handler during start-up: unwinds imports and the model load at
    once. A BaseException so that no ``except Exception`` on the way swallows it."""


class SignalStop:
    """A signal sets ``requested``; while ``raise_now`` (start-up) it also raises ``Stopped``.
    Once the node spins, the spin loop polls ``requested`` and tears down in order."""

    def __init__(self):
        self.requested = False
        self.raise_now = True

    def _handler(self, signum: int, frame: Any) -> None:
        self.requested = True
        if self.raise_now:
            self.raise_now = False
            raise Stopped(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[SignalStop]:
        previous = {sig: signal.signal(sig, self._handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


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
