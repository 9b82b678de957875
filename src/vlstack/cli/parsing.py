"""What every subcommand shares: how it is declared and how its config is built from flags and `--set`."""

from __future__ import annotations

import argparse


def add_command(commands, name: str, summary: str, details: str, settable: bool = True) -> argparse.ArgumentParser:
    """A subcommand; `settable` ones take `--set` overrides of their config."""
    sub = commands.add_parser(name, help=summary, description=f"{summary} {details}")
    if settable:
        sub.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a config field, e.g. --set train.steps=200 (repeatable)")
    return sub


def configured(cls, flags: dict, overrides: list[str]):
    """A `cls` config from the command's flags (None: not given, keep the default), then the --set overrides."""
    from vlstack.config import apply_overrides

    return apply_overrides(cls(**{k: v for k, v in flags.items() if v is not None}), overrides)

