"""``vitkd-zoo quickstart``: the main job. Until the full reproduction lands, an honest demo of the students."""
from __future__ import annotations

import argparse

from .commands.models import BASELINE, format_table, model_table


def run(args: argparse.Namespace) -> int:
    names = [BASELINE, "deit_tiny_lift", "deit_tiny_widelast"]
    print("vitkd_zoo quickstart: building DeiT-Tiny and both students (random weights, 224 px, CPU)…")
    print(format_table(model_table(names, batch_size=8, seconds=args.seconds)))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("quickstart", help="the main job (see README)")
    p.add_argument("--seconds", type=float, default=3.0)
    p.set_defaults(func=run)
