"""Progress bars that draw only on a terminal.

tqdm redraws several times a second; into a log file or a pipe (CI, ``2> run.log``, a
systemd unit) that is thousands of carriage-return updates. ``progress_bar`` is tqdm with
the bar shown only when its stream (stderr) is a terminal, and never when the caller turns
progress off (``--no-progress``). Every progress bar of the package goes through it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Optional


def progress_bar(iterable: Optional[Iterable] = None, *, enabled: bool = True, **kwargs: Any):
    """``tqdm(iterable, **kwargs)``, disabled unless ``enabled`` and stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(iterable, disable=None if enabled else True, **kwargs)
