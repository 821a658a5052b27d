"""``vitkd-zoo`` command line. Each concern registers its own subcommands (``register(subparsers)``)."""
from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# Modules that define ``register(subparsers)``; each subcommand sets ``func(args) -> int``.
_COMMAND_MODULES = (
    "vitkd_zoo.commands.models",
    "vitkd_zoo.quickstart",
    "vitkd_zoo.analysis.cli",
    "vitkd_zoo.hub.cli",
)


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    parser = argparse.ArgumentParser(
        prog="vitkd-zoo",
        description="Lift / WideLast ViT students (arXiv 2511.15572): models, analysis, export and publishing.",
    )
    parser.add_argument("--version", action="version", version=f"vitkd-zoo {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:  # a real missing dependency inside the module, not an absent module
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
