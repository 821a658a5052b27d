"""Params, GMACs and CPU img/s of DeiT-Tiny and the two students, measured side by side in one run.

    python benchmarks/models.py [--batch-size 16] [--seconds 5] [--threads 2]

GMACs count attention matmuls (FlopCounterMode over timm's explicit attention path), as the authors' README does
(2 x MACs = their GFLOPs). img/s is fp32 inference on this machine's CPU; compare ratios, not absolutes.
"""
from __future__ import annotations

import argparse
import json

import torch

from vitkd_zoo.commands.models import BASELINE, format_table, model_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = model_table([BASELINE, "deit_tiny_lift", "deit_tiny_widelast"], args.batch_size, args.seconds)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch_size}, 224 px, fp32")
    print(format_table(rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
