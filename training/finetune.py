#!/usr/bin/env python
r"""Fine-tune a trained model on a new dataset with a new classification head.

    accelerate launch training/finetune.py --model local-dir:outputs/lift/export \
        --config training/configs/fmnist/finetune.yaml --output-dir outputs/lift_ft [--resume] [--<key> VALUE ...]

``--model`` is a registry name (timm pretrained weights), an ``hf-hub:org/repo`` id or an exported folder
(``local-dir:DIR`` or just ``DIR``); its weights load, and the head is rebuilt for the dataset's classes. By default
there is no teacher (set ``--teacher`` and ``--alpha`` to fine-tune with distillation). Same loop as distill.py.
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
    parser.add_argument("--model", help="weights to start from: registry name, hf-hub:org/repo, local-dir:DIR or DIR")
    parser.add_argument("--config", default="training/configs/fmnist/finetune.yaml", help="YAML recipe")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --output-dir")
    args, rest = parser.parse_known_args(argv)
    try:
        overrides = parse_cli_overrides(rest)
    except ConfigError as e:
        parser.error(str(e))
    overrides.setdefault("pretrained", True)  # fine-tuning always starts from trained weights
    if args.model:
        overrides["model"] = args.model
    try:
        summary = run_training(args.config, args.output_dir, overrides, resume=args.resume)
    except (ConfigError, DatasetError, SetupError, LayerNotFoundError) as e:  # checks before training
        parser.exit(2, f"{parser.prog}: error: {type(e).__name__}: {e}\n")
    print(json.dumps({k: summary[k] for k in ("method", "model", "top1", "top5", "epochs", "images_seen",
                                              "eval_count", "num_classes", "export_dir")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
