"""What the node's process does about signals and start-up errors; imports nothing heavy.

``SignalStop`` turns SIGINT and SIGTERM into an orderly exit (see ``main``);
``startup_error_text`` makes the one ``[eacnet] error: ...`` line of a failed start.
"""

from __future__ import annotations

import contextlib
import re
import signal
from collections.abc import Iterator
from typing import Any


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


_RCL_SOURCE_LOCATION = re.compile(r",? at /[^,]*?:\d+")


def startup_error_text(exc: BaseException) -> str:
    """One line for ``[eacnet] error: ...``: our own errors carry a message made for
    users; anything else also names its type so it can be searched for. rcl's messages
    lose the C source locations they carry (", at /project/src/rcl/arguments.c:415")."""
    text = _RCL_SOURCE_LOCATION.sub("", " ".join(str(exc).split())).strip() or "(no message)"
    return text if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {text}"
