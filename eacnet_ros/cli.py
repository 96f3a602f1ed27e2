"""``eacnet``: the one command-line tool. It joins the ROS-free core commands with the
bag tools (which need only ``rosbags``, not a ROS install)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Optional

from eacnet_core import __version__
from eacnet_core.cli import add_core_commands
from eacnet_core.options import join_dash_values

from . import demo
from .bags import cli as bags
from .bench import bag_replay, soak
from .bench import dds as dds_bench
from .bench import pipeline as pipeline_bench


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eacnet", description="EACNet real-time semantic segmentation: benchmark, export, train, "
                                   "evaluate, segment images and replay ROS 2 bags.")
    parser.add_argument("--version", action="version", version=f"eacnet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    add_core_commands(sub)
    bags.add_parser(sub)
    demo.add_parser(sub)
    pipeline_bench.add_parser(sub)
    dds_bench.add_parser(sub, soak=soak.run)
    bag_replay.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(join_dash_values(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("eacnet: interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError) as exc:  # bad input: one clear line, no traceback
        if args.verbose:
            raise
        print(f"eacnet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
