#!/usr/bin/env python
r"""Distil a timm student from a frozen teacher with the losses of arXiv 2511.15572 (or train it without one).

    accelerate launch training/distill.py --config training/configs/imagenet/lift_softkd_fft.yaml \
        --output-dir outputs/lift_softkd_fft [--resume] [--<config-key> VALUE ...]

Any config key can be overridden (``--epochs 1 --max-train-samples 2000 --seed 0``, ``--model-kwargs.lift_dim 384``).
Every run ends with ``<output-dir>/summary.json`` and, when ``export`` is on, ``<output-dir>/export``.
The training loop itself is ``vitkd_zoo.distill.run_training``; the building blocks it reads top to bottom are in
``vitkd_zoo/distill/`` (teacher.py, taps.py, losses.py, data.py, trainer.py).
"""
import argparse
import json
import sys

from vitkd_zoo.distill import (
    ConfigError,
    DatasetError,
    LayerNotFoundError,
    SetupError,
    parse_cli_overrides,
    run_training,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML recipe, e.g. training/configs/fmnist/lift_softkd_fft.yaml")
    parser.add_argument("--output-dir", required=True, help="checkpoints, logs, summary.json and export/ go here")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    args, rest = parser.parse_known_args(argv)
    try:
        overrides = parse_cli_overrides(rest)
    except ConfigError as e:
        parser.error(str(e))
    try:
        summary = run_training(args.config, args.output_dir, overrides, resume=args.resume)
    except (ConfigError, DatasetError, SetupError, LayerNotFoundError) as e:  # checks before training
        parser.exit(2, f"{parser.prog}: error: {type(e).__name__}: {e}\n")
    print(json.dumps({k: summary[k] for k in ("method", "top1", "top5", "best_top1", "epochs", "images_seen",
                                              "eval_count", "export_dir")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
