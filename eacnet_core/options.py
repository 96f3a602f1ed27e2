"""The command-line options that several ``eacnet`` commands share: one spelling, one meaning.

* Sizes are **WxH**, as cameras, ROS and image tools write them (``1280x720``):
  ``--resize`` (the size the network sees: eval, segment, bag-eval, demo, bench-pipeline),
  ``--size`` (the input of bench and export), ``--crop-size`` and ``--val-resize`` (train),
  ``--sizes`` (bench-pipeline, bench-dds).
* ``--out`` is where a command's main output goes; ``--overwrite`` lets it replace outputs
  that exist (never an input); ``--batch-size``; ``--device`` (default ``auto``);
  ``--threads`` wherever a model runs.

Old spellings keep working for one release, with a warning on stderr, and keep their old
meaning: the HxW ones (``--inference-size`` of segment / bag-eval / demo, ``--size`` of eval,
``--crop``, ``--val-size`` of train) are still read as HxW, never silently as WxH. Their new
names differ on purpose, so a size can never be read in the other order. An old spelling
and its new one together are an error.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional


def parse_hw(text: str, order: str = "HxW") -> tuple[int, int]:
    """A size as (height, width). '360x480' is H x W, as the paper writes crops; with
    ``order="WxH"``, '1280x720' is W x H, as cameras are described. '0' or '' -> (0, 0),
    meaning "not set"."""
    text = (text or "").strip().lower()
    if text in ("", "0"):
        return (0, 0)
    parts = text.split("x")
    try:
        a, b = (int(p) for p in parts)
    except ValueError:
        example = "360x480" if order == "HxW" else "1280x720"
        raise ValueError(f"expected a size as {order} (e.g. {example}), got {text!r}") from None
    if a < 1 or b < 1:
        raise ValueError(f"size must be positive, got {text!r}")
    return (a, b) if order == "HxW" else (b, a)


DEVICE_HELP = "auto | cpu | cuda | cuda:N (default auto: CUDA when present)"


def wxh(text: str) -> tuple[int, int]:
    """argparse type of a WxH size: '1280x720' -> (720, 1280), i.e. (height, width).
    '0' means "not set" (0, 0) where the option allows it."""
    try:
        return parse_hw(text, order="WxH")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def at_least(minimum: int) -> Callable[[str], int]:
    """argparse type of an integer option that must be >= ``minimum``: argparse then names
    the option beside the message (``argument --runs: must be an integer >= 1, got '0'``)."""

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    check.__name__ = f"integer >= {minimum}"
    return check


def number_in(low: float, high: float = math.inf, low_open: bool = False) -> Callable[[str], float]:
    """argparse type of a float option within [low, high] ((low, high] with ``low_open``)."""
    bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]" if high != math.inf else \
        f"{'>' if low_open else '>='} {low:g}"

    def check(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (low < value if low_open else low <= value) or not value <= high:
            raise argparse.ArgumentTypeError(f"must be a number {'in ' if high != math.inf else ''}{bounds}, "
                                             f"got {text!r}")
        return value

    check.__name__ = f"number {bounds}"
    return check


#: The overlay opacity of segment, bag-eval and the node: 0 (frame only) to 1 (mask only).
opacity = number_in(0.0, 1.0)


def join_dash_values(argv: Sequence[str]) -> list[str]:
    """``--resize -480x360`` -> ``--resize=-480x360``. argparse reads a value that starts
    with '-' and is not a plain negative number as the next option, and answers "expected
    one argument" without naming the value; joined, the option's own check names both."""
    joined: list[str] = []
    for token in argv:
        previous = joined[-1] if joined else ""
        if (previous.startswith("--") and "=" not in previous and re.fullmatch(r"-\d[\w.,]*x[\w.,-]*", token)):
            joined[-1] = f"{previous}={token}"
        else:
            joined.append(token)
    return joined


def hxw(text: str) -> tuple[int, int]:
    """argparse type of the deprecated HxW spellings: '360x480' -> (360, 480)."""
    try:
        return parse_hw(text, order="HxW")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def warn_deprecated(old: str, new: str, note: str = "") -> None:
    """One line on stderr: the old spelling still works this release, and what replaces it."""
    print(f"eacnet: warning: {old} is deprecated and will be removed in the next release; use {new}"
          + (f" ({note})" if note else ""), file=sys.stderr)


@dataclass(frozen=True)
class Alias:
    """An old spelling of an option: its flag, its own value type when its meaning differs
    (an HxW size), and a note for the warning."""

    flag: str
    type: Optional[Callable[[str], Any]] = None
    note: str = ""


class _Deprecated(argparse.Action):
    """Stores like the option it is an old name of, after a deprecation warning."""

    def __init__(self, option_strings, dest, replacement: str = "", note: str = "", **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.replacement, self.note = replacement, note

    def __call__(self, parser, namespace, values, option_string=None):
        warn_deprecated(option_string, self.replacement, self.note)
        setattr(namespace, self.dest, values)


def add_option(parser: argparse.ArgumentParser, flag: str, *, aliases: Sequence[Alias] = (), required: bool = False,
               **kwargs: Any) -> argparse.Action:
    """``parser.add_argument(flag, **kwargs)`` plus its old spellings, each storing into the
    same place. They form a mutually exclusive group, so giving both is argparse's error."""
    group = parser.add_mutually_exclusive_group(required=required)
    action = group.add_argument(flag, **kwargs)
    for alias in aliases:
        group.add_argument(alias.flag, dest=action.dest, action=_Deprecated, replacement=flag, note=alias.note,
                           type=alias.type or kwargs.get("type"), metavar=kwargs.get("metavar"),
                           default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return action


def add_resize(parser: argparse.ArgumentParser, aliases: Sequence[Alias] = (), flag: str = "--resize",
               what: str = "frames") -> argparse.Action:
    """The size the network sees, WxH; unset (None) or '0': each image's own size."""
    return add_option(parser, flag, aliases=aliases, type=wxh, default=None, metavar="WxH",
                      help=f"resize {what} to this size for the network, WxH (e.g. 480x360; default: each "
                           "image's own size)")


#: The old HxW --inference-size of segment, bag-eval and demo.
INFERENCE_SIZE_HXW = Alias("--inference-size", hxw, "--inference-size was HxW; --resize is WxH: "
                                                    "--inference-size 360x480 is --resize 480x360")


def add_out(parser: argparse.ArgumentParser, help: str, aliases: Sequence[Alias] = (), required: bool = False,
            **kwargs: Any) -> argparse.Action:
    return add_option(parser, "--out", aliases=aliases, required=required, help=help, **kwargs)


def add_overwrite(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace outputs that exist (an input is never replaced)")


def add_device(parser: argparse.ArgumentParser, default: Any = "auto", note: str = "") -> None:
    """``--device``, the one definition of every command's (train: ``argparse.SUPPRESS``
    as default, its config holds the default)."""
    parser.add_argument("--device", default=default, help=DEVICE_HELP + note)


def add_threads(parser: argparse.ArgumentParser, default: Any = 0) -> None:
    parser.add_argument("--threads", type=at_least(0), default=default,
                        help="CPU threads for torch / onnxruntime (default 0: the library default)")


def add_batch_size(parser: argparse.ArgumentParser, default: int, aliases: Sequence[Alias] = ()) -> None:
    add_option(parser, "--batch-size", aliases=aliases, type=at_least(1), default=default,
               help=f"images per forward pass (default {default})")


def size_from_height_width(args: argparse.Namespace, default: Optional[tuple[int, int]]) -> Optional[tuple[int, int]]:
    """bench / export: ``--size WxH``, or the old ``--height`` / ``--width`` pair (deprecated).
    Returns (height, width), or ``default`` when neither is given."""
    old = [flag for flag, value in (("--height", args.height), ("--width", args.width)) if value is not None]
    if not old:
        return args.size if args.size is not None else default
    if args.size is not None:
        raise ValueError(f"give --size WxH or the old {' and '.join(old)}, not both")
    warn_deprecated(" / ".join(old), "--size WxH", "e.g. --height 360 --width 480 is --size 480x360")
    fallback = default or (None, None)
    height = args.height if args.height is not None else fallback[0]
    width = args.width if args.width is not None else fallback[1]
    if height is None or width is None:
        raise ValueError("give --size WxH (or both --height and --width)")
    return height, width


def add_height_width_aliases(parser: argparse.ArgumentParser) -> None:
    """The old --height / --width of bench and export, hidden from --help."""
    parser.add_argument("--height", type=at_least(1), default=None, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=at_least(1), default=None, help=argparse.SUPPRESS)
