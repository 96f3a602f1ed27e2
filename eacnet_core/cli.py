"""The core subcommands of ``eacnet``. Each feature module owns its arguments
(``add_parser``) and its ``run``; this file only lists them."""

from __future__ import annotations

from . import (
    bench,
    bench_confidence,
    campaign,
    curves,
    evaluate,
    export,
    labels,
    packaging,
    segment,
    train_cli,
    train_profile,
)

#: Modules with ``add_parser(subparsers)``, in the order ``eacnet --help`` lists them.
CORE_COMMANDS = (bench, bench_confidence, export, segment, train_cli, train_profile, campaign, curves, evaluate,
                 packaging, labels)


def add_core_commands(subparsers) -> None:
    for module in CORE_COMMANDS:
        module.add_parser(subparsers)
