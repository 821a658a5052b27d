"""Run configuration: one flat dict of documented keys, read from YAML, overridable key by key.

* ``load_config(path_or_dict, overrides)``: a YAML file may name a ``base:`` file (relative to itself) whose keys it
  overrides; then ``overrides`` apply. Override keys accept dashes (``max-train-samples``) and dotted paths into
  dict-valued keys (``model_kwargs.embed_dim``); string values are parsed as YAML (``1``, ``2e-3``, ``null``,
  ``[0.08, 1.0]``, ``{embed_dim: 64}``).
* ``validate_config``: unknown keys (with a "did you mean"), wrong choices and inconsistent combinations raise
  ``ConfigError`` before any model or data is built.

The method is not a single name: it is spelled by orthogonal keys (see docs/training.md), and ``method_name(cfg)``
derives a readable label such as ``lift+softkd+fft`` for logs, summaries and model cards.
"""
from __future__ import annotations

import copy
import difflib
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DEFAULTS", "ConfigError", "load_config", "apply_overrides", "parse_cli_overrides", "validate_config",
           "method_name"]


class ConfigError(ValueError):
    """A configuration key or value that cannot run; the message names the key and the fix."""


DEFAULTS: dict[str, Any] = {
    # --- student -------------------------------------------------------------------------------------------
    "model": "deit_tiny_lift",      # timm/vitkd_zoo name, hf-hub:org/repo, local-dir:/path, or an export folder
    "model_kwargs": {},             # architecture kwargs (img_size, patch_size, in_chans, embed_dim, lift_dim, ...)
    "pretrained": False,            # load the weights `model` names (finetuning); hf-hub:/local-dir: imply True
    "checkpoint": None,             # initialise the student from a .safetensors/.pth file
    "num_classes": None,            # null: from the dataset; a different value than the weights' gives a new head
    "student_layer": "distill",     # 'distill' = the paper's feature (forward_distill / last block) or a block index
    # --- teacher (null: no teacher, plain CE training) -----------------------------------------------------
    "teacher": None,                # timm name (cait_s24_224), hf-hub:org/repo, local-dir:/path or an export folder
    "teacher_kwargs": {},           # kwargs for the teacher's create_model (tiny Fashion-MNIST teachers)
    "teacher_checkpoint": None,     # weights file for a registry-name teacher
    "teacher_pretrained": True,     # registry names: load timm's pretrained weights
    "teacher_layer": -1,            # teacher block distilled (CaiT-S24: 23 = -1, last self-attention block)
    "teacher_dtype": None,          # null (as the student) | bf16 | fp16 | fp32: cast the frozen teacher's weights
    "teacher_compile": False,
    "teacher_fused_attention": None,  # CaiT talking-heads attention via exact fused SDPA (null: on CUDA only)
    "teacher_mean": None,           # override the teacher's own normalisation (null: its pretrained_cfg)
    "teacher_std": None,
    # --- loss: (1 - alpha) * CE_ls + alpha * KD + beta * feature_weight * feature ----------------------------
    "alpha": 0.0,
    "kd_type": "soft",              # soft (KL, batchmean, x T^2) | hard (CE to teacher argmax)
    "temperature": 1.0,
    "beta": 1.0,
    "feature_weight": 0.2,          # the authors' w_fft
    "feature_loss": "none",         # none | mse | fft (spatial rfft2, ortho)
    "feature_adapter": "none",      # none (widths must match) | pool (channel avg-pool) | projector (train-only)
    "label_smoothing": 0.1,
    # --- data ----------------------------------------------------------------------------------------------
    "dataset": "fashion_mnist",     # fashion_mnist | imagefolder | hf | wds | any timm create_dataset name
    "data_dir": None,               # root folder (imagefolder: <data_dir>/<split>/<class>/*.jpg)
    "train_split": "train",
    "eval_split": "validation",     # fashion_mnist: 'test'; imagefolder: 'val' is also tried
    "hf_name": None,                # hf: dataset id for datasets.load_dataset (or data_dir = a save_to_disk folder)
    "image_key": None,              # hf: image column (null: image/img/pixel_values)
    "label_key": None,              # hf: label column (null: label/labels)
    "max_train_samples": None,      # class-balanced subset for fashion_mnist, first N otherwise
    "max_eval_samples": None,
    "verify_images": 64,            # decode this many train images before training (-1: all, 0: none)
    "input_size": None,             # [C, H, W]; null: from the student's pretrained_cfg / model_kwargs
    "mean": None,                   # null: dataset default (Fashion-MNIST) or the student's pretrained_cfg
    "std": None,
    "interpolation": None,
    "crop_pct": None,
    "scale": [0.08, 1.0],
    "hflip": 0.5,
    "color_jitter": 0.4,
    "auto_augment": "rand-m9-mstd0.5-inc1",
    "reprob": 0.25,
    "remode": "pixel",
    "recount": 1,
    "repeated_aug": 3,              # repeats per image per epoch (1: off)
    "mixup": 0.0,
    "cutmix": 0.0,
    "mixup_prob": 1.0,
    "mixup_switch_prob": 0.5,
    "num_workers": 4,
    "pin_memory": True,
    # --- optimisation --------------------------------------------------------------------------------------
    "epochs": 300,
    "global_batch_size": 2048,      # summed over processes and accumulation steps
    "grad_accum_steps": 1,
    "opt": "adamw",
    "lr": 2e-3,
    "weight_decay": 0.05,
    "opt_eps": 1e-8,
    "opt_betas": None,
    "momentum": 0.9,
    "layer_decay": None,
    "clip_grad": None,              # max grad norm
    "sched": "cosine",
    "sched_on": "epoch",            # epoch (the authors) | step
    "warmup_epochs": 5,
    "warmup_lr": 1e-6,
    "min_lr": 1e-5,
    "cooldown_epochs": 0,
    "drop_path_rate": 0.0,
    "ema": False,
    "ema_decay": 0.99996,
    "eval_ema": False,              # the authors evaluate the raw model
    "mixed_precision": "no",        # no | bf16 | fp16 (the Accelerate launcher's setting wins when given)
    "compile": False,
    "seed": 0,
    # --- checkpoints, evaluation, logging ------------------------------------------------------------------
    "checkpoint_every_steps": 0,    # 0: only at the end of each epoch
    "checkpoints_total_limit": 2,
    "eval_every_epochs": 1,
    "log_every_steps": 50,
    "log_with": ["tensorboard"],    # any of tensorboard, wandb, ... ([] for JSON lines only)
    "progress": True,
    "export": True,                 # write the final model (hub export) to <output_dir>/export
    "export_benchmark_seconds": 2.0,  # CPU timing window of the exported model card's img/s column
}

_CHOICES = {
    "kd_type": ("soft", "hard"),
    "feature_loss": ("none", "mse", "fft"),
    "feature_adapter": ("none", "pool", "projector"),
    "mixed_precision": ("no", "bf16", "fp16"),
    "teacher_dtype": (None, "bf16", "fp16", "fp32"),
    "sched_on": ("epoch", "step"),
}
_DICT_KEYS = ("model_kwargs", "teacher_kwargs")


def _read_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    path = Path(path).resolve()
    if path in seen:
        raise ConfigError(f"config {path} includes itself through `base:`")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    with open(path) as f:
        data = yaml.safe_load(f) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path} must be a YAML mapping, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    merged = _read_yaml(path.parent / base, seen + (path,))
    merged.update(data)
    return merged


def _parse_value(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(parsed, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
        try:
            return float(parsed)
        except ValueError:
            return parsed
    return parsed


def apply_overrides(cfg: dict[str, Any], overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Apply ``{key: value}`` overrides (dashes or underscores, dotted paths into dict keys, YAML strings)."""
    for raw_key, raw_value in (overrides or {}).items():
        key = raw_key.lstrip("-").replace("-", "_")
        value = _parse_value(raw_value)
        if "." in key:
            top, sub = key.split(".", 1)
            _check_known(top)
            if not isinstance(cfg.get(top), dict):
                raise ConfigError(f"--{raw_key}: {top!r} is not a mapping; set it as a whole (e.g. '{{a: 1}}')")
            cfg[top] = dict(cfg[top], **{sub: value})
        else:
            _check_known(key)
            cfg[key] = value
    return cfg


def _check_known(key: str) -> None:
    if key not in DEFAULTS:
        close = difflib.get_close_matches(key, DEFAULTS, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown config key {key!r}.{hint} All keys are listed in docs/training.md.")


def parse_cli_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """``['--epochs', '1', '--model-kwargs.embed_dim=64', '--ema']`` -> ``{'epochs': '1', ..., 'ema': 'true'}``."""
    out, i = {}, 0
    tokens = list(tokens)
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--"):
            raise ConfigError(f"unexpected argument {tok!r}: overrides look like `--key value` or `--key=value`")
        if "=" in tok:
            key, value = tok[2:].split("=", 1)
            i += 1
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            key, value = tok[2:], tokens[i + 1]
            i += 2
        else:
            key, value = tok[2:], "true"
            i += 1
        out[key] = value
    return out


def load_config(
        config: str | os.PathLike | Mapping[str, Any] | None = None,
        overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Defaults <- YAML file (with its ``base:`` chain) or dict <- overrides; validated."""
    cfg = copy.deepcopy(DEFAULTS)
    if config is not None:
        data = _read_yaml(Path(config)) if isinstance(config, (str, os.PathLike)) else copy.deepcopy(dict(config))
        data.pop("base", None)
        apply_overrides(cfg, {k: v for k, v in data.items()})
    apply_overrides(cfg, overrides)
    return validate_config(cfg)


def validate_config(cfg: dict[str, Any]) -> dict[str, Any]:
    for key, choices in _CHOICES.items():
        if cfg[key] not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, choices))}; got {cfg[key]!r}")
    for key in _DICT_KEYS:
        if cfg[key] is None:
            cfg[key] = {}
        if not isinstance(cfg[key], dict):
            raise ConfigError(f"{key} must be a mapping of keyword arguments, got {cfg[key]!r}")
    if isinstance(cfg["log_with"], str):
        cfg["log_with"] = [] if cfg["log_with"] in ("", "none") else [cfg["log_with"]]
    cfg["log_with"] = list(cfg["log_with"] or [])
    if not 0.0 <= float(cfg["alpha"]) <= 1.0:
        raise ConfigError(f"alpha must be in [0, 1], got {cfg['alpha']}")
    for key in ("epochs", "global_batch_size", "grad_accum_steps", "repeated_aug"):
        if not isinstance(cfg[key], int) or cfg[key] < 1:
            raise ConfigError(f"{key} must be a positive integer, got {cfg[key]!r}")
    if cfg["teacher"] is None:
        if cfg["alpha"] > 0 or cfg["feature_loss"] != "none":
            raise ConfigError(
                f"alpha={cfg['alpha']} / feature_loss={cfg['feature_loss']!r} need a teacher: set `teacher` "
                "(e.g. --teacher cait_s24_224 or --teacher local-dir:DIR), or alpha: 0 and feature_loss: none "
                "to train without one")
    elif cfg["alpha"] == 0 and cfg["feature_loss"] == "none":
        raise ConfigError("a teacher is set but alpha is 0 and feature_loss is none: it would not be used. Set "
                          "alpha > 0 (logit KD), a feature_loss, or `teacher: null`.")
    if cfg["feature_loss"] == "none" and cfg["feature_adapter"] != "none":
        raise ConfigError(f"feature_adapter={cfg['feature_adapter']!r} needs a feature_loss (mse or fft)")
    for key in ("input_size", "mean", "std"):
        if cfg[key] is not None and not isinstance(cfg[key], (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {cfg[key]!r}")
    return cfg


def method_name(cfg: Mapping[str, Any], architecture: str | None = None) -> str:
    """A readable label, e.g. ``lift+softkd+fft``, ``deit+softkd+pool-fft``, ``widelast+ce``. ``architecture``
    (the built model's registered name) wins over ``cfg['model']``, which may be a folder."""
    model = str(architecture or cfg["model"]).lower()
    arch = model.split(":")[-1].rstrip("/").split("/")[-1].split(".")[0]
    student = "lift" if "lift" in model else "widelast" if "widelast" in model else (arch.split("_")[0] or "vit")
    parts = [student]
    if cfg.get("teacher") and cfg["alpha"] > 0:
        parts.append(f"{cfg['kd_type']}kd")
    if cfg.get("teacher") and cfg["feature_loss"] != "none":
        adapter = "" if cfg["feature_adapter"] == "none" else f"{cfg['feature_adapter']}-"
        parts.append(adapter + cfg["feature_loss"])
    if len(parts) == 1:
        parts.append("ce")
    return "+".join(parts)
