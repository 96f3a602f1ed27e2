"""The core subcommands of ``eacnet``. Each feature module owns its arguments
(``add_parser``) and its ``run``; this file only lists them."""

from __future__ import annotations

from eacnet_core.data import labels
from eacnet_core.evaluate import bench, bench_confidence, evaluation, packaging
from eacnet_core.infer import export, segment
from eacnet_core.train import campaign, curves, profile
from eacnet_core.train import cli as train_cli

#: Modules with ``add_parser(subparsers)``, in the order ``eacnet --help`` lists them.
CORE_COMMANDS = (bench, bench_confidence, export, segment, train_cli, profile, campaign, curves, evaluation,
                 packaging, labels)


def add_core_commands(subparsers) -> None:
    for module in CORE_COMMANDS:
        module.add_parser(subparsers)
