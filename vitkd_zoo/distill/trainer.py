"""The training function: distillation (or plain CE / finetuning) of a timm student with Accelerate.

``run_training(config, output_dir, overrides, resume)`` reads top to bottom like Accelerate's
``complete_nlp_example.py``: accelerator -> data -> student, teacher, loss -> optimizer, scheduler, EMA ->
``prepare`` -> resume -> epochs of ``train_step`` -> ``evaluate`` -> checkpoints -> summary and export.

Accelerate pitfalls handled here (docs: ../shared ecosystem notes, see docs/training.md):
* the timm scheduler is *not* prepared (a prepared one steps once per process); we call ``step_update`` per
  optimizer update and ``step`` per epoch, and checkpoint it with ``register_for_checkpointing``;
* the repeated-augmentation sampler is global and sharded once, by Accelerate;
* the teacher is never prepared (no DDP, no grads) and runs under the same autocast as the student;
* losses are fp32; eval uses ``gather_for_metrics`` so every eval image is counted exactly once;
* checkpoints are written to a temporary folder and renamed, rotated, and hold model, optimizer, RNG, scheduler,
  EMA and the loop position; ``resume`` skips the batches already seen in the interrupted epoch.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .config import load_config, method_name
from .data import RepeatedAugSampler, SeededDataset, build_datasets, build_transforms, resolve_data_config
from .losses import ChannelPool, DistillationLoss, ProjectorAdapter
from .taps import DISTILL_LAYER, FeatureTap
from .teacher import FrozenTeacher, create_teacher, resolve_model_name

__all__ = [
    "run_training", "DistillationModel", "train_step", "evaluate", "check_distillation_setup",
    "NonFiniteLossError", "SetupError", "FeatureWidthMismatchError", "TokenGridMismatchError", "find_checkpoints",
    "build_student", "export_model",
]

_logger = logging.getLogger(__name__)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, None: None}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stopped without writing a checkpoint of the broken state."""


class SetupError(ValueError):
    """Student, teacher and losses do not fit together; raised before training starts."""


class FeatureWidthMismatchError(SetupError):
    """The student's distilled feature and the teacher's differ in channels and no adapter is configured."""


class TokenGridMismatchError(SetupError):
    """The student's and teacher's token grids differ (image size / patch size)."""


# ----------------------------------------------------------------------------------------------------------------
# the trained module: student (+ feature adapter)
# ----------------------------------------------------------------------------------------------------------------
class DistillationModel(nn.Module):
    """What the optimizer trains and DDP wraps: the student and, for the baselines, a feature adapter.

    ``forward(x, teacher_feature)`` returns ``(logits, student_feature, teacher_feature)``, the features already
    aligned by the adapter (channel pooling or the train-only projector). Export only ``.student``.
    """

    def __init__(self, student: nn.Module, layer: int | str = DISTILL_LAYER, with_feature: bool = False,
                 adapter: nn.Module | None = None):
        super().__init__()
        self.student = student
        self.adapter = adapter
        self.tap = FeatureTap(student, layer, with_feature=with_feature, role="student")

    def forward(self, x: torch.Tensor, teacher_feature: torch.Tensor | None = None):
        logits, feature = self.tap(x)
        if self.adapter is not None and feature is not None and teacher_feature is not None:
            feature, teacher_feature = self.adapter(feature, teacher_feature)
        return logits, feature, teacher_feature


def build_student(cfg: Mapping[str, Any], num_classes: int | None) -> nn.Module:
    """The student from ``model`` (+ ``model_kwargs``): registry name, ``hf-hub:``, ``local-dir:``, export folder,
    or ``checkpoint``. Weights that name another class count get a new head (finetuning)."""
    from vitkd_zoo.models import create_model

    name = resolve_model_name(str(cfg["model"]))
    kwargs = dict(cfg["model_kwargs"])
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if cfg["drop_path_rate"]:
        kwargs.setdefault("drop_path_rate", cfg["drop_path_rate"])
    if cfg["checkpoint"]:
        return create_model(name, checkpoint_path=cfg["checkpoint"], **kwargs)
    pretrained = bool(cfg["pretrained"]) or name.startswith(("hf-hub:", "local-dir:"))
    return create_model(name, pretrained=pretrained, **kwargs)


def check_distillation_setup(
        student_tap: FeatureTap, teacher: FrozenTeacher, input_size: tuple[int, int, int], adapter: str,
        num_classes: int, alpha: float,
) -> dict[str, Any]:
    """Dry-run one zero image through both models and compare what the losses will compare.

    Raises ``TokenGridMismatchError``, ``FeatureWidthMismatchError`` or ``SetupError`` (teacher cannot take the
    input, class counts differ for logit KD); ``LayerNotFoundError`` was raised earlier when a layer is missing.
    Returns the shapes for the log.
    """
    s_model, t_model = student_tap.model, teacher.model
    try:
        t_logits, t_feature = teacher(torch.zeros(1, *input_size, device=teacher.device))
    except Exception as e:
        t_size = (getattr(t_model, "pretrained_cfg", None) or {}).get("input_size")
        raise SetupError(f"the teacher {type(t_model).__name__} cannot run on the student's input {input_size} "
                         f"(its configured input is {t_size}): {type(e).__name__}: {e}. Build the teacher for the same "
                         "image size and channels (teacher_kwargs: img_size, in_chans).") from e
    info = {"teacher_logits": tuple(t_logits.shape[1:])}
    if alpha > 0 and t_logits.shape[-1] != num_classes:
        raise SetupError(f"the teacher predicts {t_logits.shape[-1]} classes, the student {num_classes}: logit KD "
                         "needs the same classes (set alpha: 0 for feature-only distillation)")
    if t_feature is None:
        return info
    s_shape = student_tap.feature_shape(input_size)
    t_shape = tuple(t_feature.shape[1:])
    info.update(student_feature=s_shape, teacher_feature=t_shape)
    if s_shape[1:] != t_shape[1:]:
        s_patch = getattr(getattr(s_model, "patch_embed", None), "patch_size", "?")
        t_patch = getattr(getattr(t_model, "patch_embed", None), "patch_size", "?")
        raise TokenGridMismatchError(
            f"token grids differ: student feature {s_shape[1]}x{s_shape[2]} (patch {s_patch}) vs teacher layer "
            f"{teacher.layer} {t_shape[1]}x{t_shape[2]} (patch {t_patch}) at input {input_size}. Feature losses "
            "compare token by token: use the same image size / patch size ratio for both models.")
    if s_shape[0] != t_shape[0] and adapter == "none":
        lift_hint = ("set model_kwargs.lift_dim (Lift) or wide_dim (WideLast) to "
                     f"{t_shape[0]}" if hasattr(s_model, "forward_distill") else
                     f"use a Lift/WideLast student with lift_dim/wide_dim={t_shape[0]}")
        raise FeatureWidthMismatchError(
            f"feature widths differ: student {s_shape[0]} channels vs teacher layer {teacher.layer} {t_shape[0]}. "
            f"Either {lift_hint}, or align them with feature_adapter: pool (channel average pooling, the paper's "
            "standard feature-KD baseline) or feature_adapter: projector (train-only Linear+BN).")
    return info


# ----------------------------------------------------------------------------------------------------------------
# one step and evaluation
# ----------------------------------------------------------------------------------------------------------------
def train_step(accelerator, module, teacher: FrozenTeacher | None, loss_fn: DistillationLoss, optimizer,
               x: torch.Tensor, y: torch.Tensor, clip_grad: float | None = None, step: int = 0,
               check_finite: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Teacher forward (no grad) -> student forward -> loss (fp32) -> finite check -> backward -> update.

    Raises ``NonFiniteLossError`` (on every process at once) before a NaN/inf loss reaches the weights.
    """
    with accelerator.accumulate(module):
        with accelerator.autocast():
            t_logits, t_feature = teacher(x) if teacher is not None else (None, None)
            logits, s_feature, t_feature = module(x, t_feature)
            loss, terms = loss_fn(logits, y, t_logits, s_feature, t_feature)
        if check_finite:
            finite = torch.isfinite(loss.detach()).float()
            if accelerator.num_processes > 1:
                finite = accelerator.reduce(finite, reduction="sum") / accelerator.num_processes
            if finite.item() < 1.0:
                parts = ", ".join(f"{k}={v.item():.4g}" for k, v in terms.items())
                raise NonFiniteLossError(f"non-finite loss at step {step} (loss={loss.item()}; {parts}).")
        accelerator.backward(loss)
        if clip_grad and accelerator.sync_gradients:
            accelerator.clip_grad_norm_(module.parameters(), clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss.detach(), terms


@torch.no_grad()
def evaluate(accelerator, model: nn.Module, loader, pre_sharded: bool = False) -> dict[str, float]:
    """Top-1 / top-5 / CE over the eval set; per-sample results are gathered with ``gather_for_metrics`` (the
    padding Accelerate adds to even out the last batches is dropped), so ``eval_count == len(eval set)``."""
    was_training = model.training
    model.eval()
    totals = torch.zeros(4, dtype=torch.float64, device=accelerator.device)
    for x, y in loader:
        if pre_sharded:  # unprepared loader (timm readers): batches are still on the CPU
            x, y = x.to(accelerator.device), y.to(accelerator.device)
        with accelerator.autocast():
            logits = model(x)
        logits = logits.float()
        k = min(5, logits.shape[-1])
        topk = logits.topk(k, dim=-1).indices
        c1 = (topk[:, 0] == y).float()
        c5 = (topk == y[:, None]).any(dim=-1).float()
        ce = nn.functional.cross_entropy(logits, y, reduction="none")
        if pre_sharded:
            c1, c5, ce = accelerator.gather((c1, c5, ce))
        else:
            c1, c5, ce = accelerator.gather_for_metrics((c1, c5, ce))
        totals += torch.stack([c1.sum(), c5.sum(), ce.sum(), torch.tensor(float(c1.numel()), device=c1.device)]
                              ).double()
    model.train(was_training)
    n = max(totals[3].item(), 1.0)
    return {"top1": 100.0 * totals[0].item() / n, "top5": 100.0 * totals[1].item() / n,
            "eval_loss": totals[2].item() / n, "eval_count": int(totals[3].item())}


# ----------------------------------------------------------------------------------------------------------------
# checkpoints
# ----------------------------------------------------------------------------------------------------------------
_CKPT_RE = re.compile(r"^step_(\d+)$")


def find_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints under ``<output_dir>/checkpoints``, oldest first (temporary folders are ignored)."""
    root = Path(output_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CKPT_RE.match(p.name))]
    return [p for _, p in sorted(found)]


class TrainState:
    """Loop position and best metrics, checkpointed with the model (``register_for_checkpointing``)."""

    def __init__(self):
        self.epoch = 0              # epoch in progress (or next to start)
        self.step_in_epoch = 0      # micro-batches of this epoch already trained (per process)
        self.global_step = 0        # optimizer updates
        self.images_seen = 0        # training images over all processes
        self.best = {"top1": -1.0, "top5": -1.0, "epoch": -1}
        self.history: list[dict] = []

    def state_dict(self) -> dict:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict) -> None:
        self.__dict__.update(state)


def _save_checkpoint(accelerator, output_dir: Path, state: TrainState, total_limit: int) -> Path:
    """``save_state`` into ``checkpoints/.tmp-step_N`` then rename to ``step_N``; keep the newest ``total_limit``.
    A crash during the save leaves only a temporary folder behind, never a half-written ``step_N``."""
    root = output_dir / "checkpoints"
    final = root / f"step_{state.global_step:09d}"
    tmp = root / f".tmp-step_{state.global_step:09d}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in find_checkpoints(output_dir)[:-max(1, total_limit)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# ----------------------------------------------------------------------------------------------------------------
# export
# ----------------------------------------------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def export_model(model: nn.Module, out_dir: str | os.PathLike, *, model_args: Mapping[str, Any],
                 data_config: Mapping[str, Any], label_names: list | None, card: Mapping[str, Any],
                 benchmark_seconds: float = 2.0) -> str:
    """Write a timm/transformers-loadable folder (``config.json`` + ``model.safetensors``), replacing ``out_dir``.

    Uses ``vitkd_zoo.hub.save_pretrained`` (model card, cost table, reload check) when importable; otherwise timm's
    ``save_for_hf(safe_serialization=True)`` with the ``model_args.num_classes`` fix. Returns which writer ran.
    ``card`` holds ``CardInfo`` fields (teacher, method, dataset, metrics, eval_split, recipe).
    """
    out_dir = Path(out_dir)
    data = {k: (list(v) if isinstance(v, tuple) else v) for k, v in data_config.items()
            if k in ("input_size", "interpolation", "crop_pct", "mean", "std")}
    model.pretrained_cfg = dict(getattr(model, "pretrained_cfg", None) or {}, num_classes=model.num_classes)
    try:
        from vitkd_zoo.hub import save_pretrained
    except ImportError:
        save_pretrained = None
    fallback_reason = "vitkd_zoo.hub not importable"
    if save_pretrained is not None:
        try:
            save_pretrained(model, out_dir, card=_json_safe(dict(card, label_names=label_names or None)),
                            data_config=data, overwrite=True, benchmark_seconds=benchmark_seconds)
            return "vitkd_zoo.hub.save_pretrained"
        except Exception as e:  # never lose a finished run to the card/cost step: write the plain timm folder
            fallback_reason = f"vitkd_zoo.hub.save_pretrained failed: {type(e).__name__}: {e}"
            _logger.warning("%s; writing a plain timm export instead", fallback_reason)
    from timm.models import save_for_hf

    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model_config = {"vitkd": _json_safe(dict(card))}
    if label_names:
        model_config["label_names"] = list(label_names)
    args = {k: v for k, v in model_args.items() if k not in ("num_classes", "drop_path_rate")}
    save_for_hf(model, str(tmp), model_config=model_config, model_args=args, safe_serialization=True,
                data_config=data)
    config = json.loads((tmp / "config.json").read_text())
    config.get("model_args", {}).pop("num_classes", None)  # transformers' TimmWrapper rejects it (ecosystem §5)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)
    return f"timm.save_for_hf ({fallback_reason})"


# ----------------------------------------------------------------------------------------------------------------
# the training function
# ----------------------------------------------------------------------------------------------------------------
def _make_accelerator(cfg: Mapping[str, Any], output_dir: Path):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import ProjectConfiguration

    if AcceleratorState._shared_state and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # several runs in one single-process Python session (quickstart: teacher, then students): Accelerate's
        # singletons would keep the first run's precision / accumulation and refuse new ones
        AcceleratorState._reset_state()
        GradientState._reset_state()
    mixed_precision = cfg["mixed_precision"]
    if mixed_precision == "no" and os.environ.get("ACCELERATE_MIXED_PRECISION", "no") != "no":
        mixed_precision = None  # the launcher's --mixed_precision wins over the default
    kwargs = {}
    if cfg["compile"]:
        kwargs["dynamo_backend"] = "inductor"
    accelerator = Accelerator(
        gradient_accumulation_steps=cfg["grad_accum_steps"],
        mixed_precision=mixed_precision,
        log_with=cfg["log_with"] or None,
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
        **kwargs,
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and accelerator.num_processes == 1:
        # torchrun started several processes but each trains alone (e.g. `--multi_gpu` on a machine without GPUs)
        raise SetupError(
            f"{world} processes were launched but Accelerate runs each one alone (no process group): they would all "
            "train the same model independently. On CPU use `ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
            "--num_processes N ...` (gloo); on GPUs check that CUDA is visible.")
    return accelerator


def _flat_hparams(cfg: Mapping[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in cfg.items():
        out[k] = v if isinstance(v, (int, float, str, bool)) else json.dumps(_json_safe(v))
    return out


def run_training(
        config: str | os.PathLike | Mapping[str, Any] | None,
        output_dir: str | os.PathLike,
        overrides: Mapping[str, Any] | None = None,
        *,
        resume: bool = False,
) -> dict[str, Any]:
    """Train (distil, or plain CE without a teacher) and return the run summary (also ``<output_dir>/summary.json``).

    Args:
        config: a YAML path (``training/configs/...``), a dict of config keys, or None for the defaults.
        output_dir: checkpoints, logs, ``metrics.jsonl``, ``summary.json`` and ``export/`` go here.
        overrides: ``{key: value}`` applied on top (``{"epochs": 1, "model_kwargs.embed_dim": 64}``).
        resume: continue from the newest checkpoint in ``output_dir`` (mid-epoch included); starts fresh if none.

    Returns:
        the summary: ``top1``, ``top5`` (last eval), ``best_top1``, ``best_top5``, ``best_epoch``, ``epochs``,
        ``images_seen``, ``global_steps``, ``eval_count``, ``method``, ``history``, ``export_dir``, ``config``, ...

    Raises:
        ConfigError, DatasetError, SetupError (and subclasses), LayerNotFoundError before training;
        NonFiniteLossError during training (the newest checkpoint on disk is the last good one).
    """
    cfg = load_config(config, overrides)
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    accelerator = _make_accelerator(cfg, output_dir)
    from accelerate.utils import set_seed

    set_seed(cfg["seed"])
    is_main = accelerator.is_main_process

    # ---- student, data -----------------------------------------------------------------------------------------
    # the input size / normalisation come from the student's config, the class count from the data: build it twice
    probe = build_student(cfg, cfg["num_classes"])  # the weights' own head (or the default) until the data says
    data_config = resolve_data_config(cfg, probe)
    train_tf, eval_tf = build_transforms(cfg, data_config)
    train_ds, eval_ds, classes = build_datasets(cfg, data_config, train_tf, eval_tf)
    num_classes = int(cfg["num_classes"] or (len(classes) if classes else 0))
    if num_classes <= 0:
        raise SetupError("could not infer the number of classes from the dataset: set num_classes")
    if classes and num_classes < len(classes):
        raise SetupError(f"num_classes={num_classes} but the dataset has {len(classes)} classes "
                         f"({', '.join(map(str, list(classes)[:5]))}, ...): labels would fall outside the head. "
                         "Remove num_classes to use the dataset's count.")
    set_seed(cfg["seed"])  # identical init whatever the probe consumed
    student = build_student(cfg, num_classes)
    del probe

    # ---- teacher, loss, adapter ------------------------------------------------------------------------------
    loss_fn = DistillationLoss(alpha=cfg["alpha"], kd_type=cfg["kd_type"], temperature=cfg["temperature"],
                               beta=cfg["beta"], feature_weight=cfg["feature_weight"],
                               feature_loss=cfg["feature_loss"], label_smoothing=cfg["label_smoothing"])
    with_feature = loss_fn.uses_feature
    teacher = None
    setup_info = {}
    if cfg["teacher"] is not None:
        t_model = create_teacher(str(cfg["teacher"]), checkpoint=cfg["teacher_checkpoint"],
                                 pretrained=cfg["teacher_pretrained"], **cfg["teacher_kwargs"])
        teacher = FrozenTeacher(
            t_model, layer=cfg["teacher_layer"], with_feature=with_feature, input_mean=data_config["mean"],
            input_std=data_config["std"], teacher_mean=cfg["teacher_mean"], teacher_std=cfg["teacher_std"],
            dtype=_DTYPES[cfg["teacher_dtype"]], compile=False,
            fused_attention=cfg["teacher_fused_attention"]).to(accelerator.device)
    module = DistillationModel(student, cfg["student_layer"], with_feature=with_feature and teacher is not None)
    if teacher is not None:
        setup_info = check_distillation_setup(module.tap, teacher, data_config["input_size"], cfg["feature_adapter"],
                                              num_classes, cfg["alpha"])
        if with_feature and cfg["feature_adapter"] == "pool":
            module.adapter = ChannelPool()
        elif with_feature and cfg["feature_adapter"] == "projector":
            module.adapter = ProjectorAdapter(setup_info["student_feature"][0], setup_info["teacher_feature"][0])
        if cfg["teacher_compile"]:
            teacher._forward = torch.compile(teacher.tap.__call__)
    set_seed(cfg["seed"] + accelerator.process_index)  # per-process drop-path / mixup randomness

    # ---- loaders -----------------------------------------------------------------------------------------------
    world = accelerator.num_processes * cfg["grad_accum_steps"]
    if cfg["global_batch_size"] % world:
        raise SetupError(f"global_batch_size {cfg['global_batch_size']} is not divisible by processes x "
                         f"grad_accum_steps = {world}")
    batch_size = cfg["global_batch_size"] // world
    map_style = hasattr(train_ds, "__len__") and not isinstance(train_ds, torch.utils.data.IterableDataset)
    loader_kwargs = dict(batch_size=batch_size, num_workers=cfg["num_workers"],
                         pin_memory=cfg["pin_memory"] and accelerator.device.type == "cuda",
                         persistent_workers=cfg["num_workers"] > 0)
    if map_style:
        if len(train_ds) < cfg["global_batch_size"] // cfg["grad_accum_steps"]:
            raise SetupError(f"the training set has {len(train_ds)} images, fewer than one global batch "
                             f"({cfg['global_batch_size']}): lower global_batch_size")
        sampler = RepeatedAugSampler(len(train_ds), cfg["repeated_aug"], seed=cfg["seed"])
        train_loader = torch.utils.data.DataLoader(SeededDataset(train_ds), sampler=sampler, drop_last=True,
                                                   generator=torch.Generator().manual_seed(cfg["seed"]),
                                                   **loader_kwargs)
    else:
        train_loader = torch.utils.data.DataLoader(train_ds, drop_last=True, **loader_kwargs)
    eval_loader = torch.utils.data.DataLoader(eval_ds, shuffle=False, drop_last=False, **loader_kwargs)

    mixup_fn = None
    if cfg["mixup"] > 0 or cfg["cutmix"] > 0:
        from timm.data import Mixup

        mixup_fn = Mixup(mixup_alpha=cfg["mixup"], cutmix_alpha=cfg["cutmix"], prob=cfg["mixup_prob"],
                         switch_prob=cfg["mixup_switch_prob"], label_smoothing=cfg["label_smoothing"],
                         num_classes=num_classes)

    # ---- optimizer, prepare, scheduler, EMA ----------------------------------------------------------------
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2

    opt_kwargs = dict(eps=cfg["opt_eps"]) if cfg["opt_eps"] is not None else {}
    if cfg["opt_betas"]:
        opt_kwargs["betas"] = tuple(cfg["opt_betas"])
    optimizer = create_optimizer_v2(module, opt=cfg["opt"], lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                                    momentum=cfg["momentum"], layer_decay=cfg["layer_decay"], **opt_kwargs)
    if map_style:
        module, optimizer, train_loader, eval_loader = accelerator.prepare(module, optimizer, train_loader,
                                                                           eval_loader)
    else:  # timm readers shard by rank themselves: do not shard their loaders again
        module, optimizer = accelerator.prepare(module, optimizer)
    steps_per_epoch = len(train_loader) if map_style else max(1, len(train_ds) // batch_size)
    updates_per_epoch = math.ceil(steps_per_epoch / cfg["grad_accum_steps"])
    scheduler, _ = create_scheduler_v2(
        optimizer, sched=cfg["sched"], num_epochs=cfg["epochs"], warmup_epochs=cfg["warmup_epochs"],
        warmup_lr=cfg["warmup_lr"], min_lr=cfg["min_lr"], cooldown_epochs=cfg["cooldown_epochs"],
        step_on_epochs=cfg["sched_on"] == "epoch", updates_per_epoch=updates_per_epoch)
    unwrapped = accelerator.unwrap_model(module)
    ema = None
    if cfg["ema"]:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(unwrapped.student, decay=cfg["ema_decay"])
    state = TrainState()
    accelerator.register_for_checkpointing(state, scheduler)
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    # ---- resume ------------------------------------------------------------------------------------------
    resumed_from = None
    if resume:
        found = find_checkpoints(output_dir)
        if found:
            resumed_from = found[-1]
            accelerator.load_state(str(resumed_from))
            accelerator.print(f"resumed from {resumed_from} (epoch {state.epoch}, batch {state.step_in_epoch}, "
                              f"step {state.global_step})")
        else:
            accelerator.print(f"--resume: no checkpoint in {output_dir / 'checkpoints'}, starting fresh")

    # ---- trackers and logs -------------------------------------------------------------------------------------
    method = method_name(cfg, (getattr(student, "pretrained_cfg", None) or {}).get("architecture"))
    if cfg["log_with"]:
        accelerator.init_trackers(output_dir.name or "vitkd", config=_flat_hparams(cfg))
    metrics_path = output_dir / "metrics.jsonl"

    def log(record: dict) -> None:
        if cfg["log_with"]:
            accelerator.log({k: v for k, v in record.items() if isinstance(v, (int, float))},
                            step=state.global_step)
        if is_main:
            with open(metrics_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    if is_main:
        n_params = sum(p.numel() for p in unwrapped.student.parameters())
        accelerator.print(f"method {method}: {cfg['model']} ({n_params:,} params) <- {cfg['teacher'] or 'no teacher'}; "
                          f"{len(train_ds) if map_style else '?'} train / {len(eval_ds) if map_style else '?'} eval "
                          f"images, {accelerator.num_processes} process(es) x batch {batch_size} x accum "
                          f"{cfg['grad_accum_steps']}, {steps_per_epoch} steps/epoch; shapes {setup_info}")

    # ---- train -----------------------------------------------------------------------------------------------
    from tqdm.auto import tqdm

    eval_model = lambda: ema.module if (ema is not None and cfg["eval_ema"]) else accelerator.unwrap_model(module).student  # noqa: E731
    last_eval: dict = {}
    start_time = time.time()
    try:
        for epoch in range(state.epoch, cfg["epochs"]):
            module.train()
            if map_style:
                train_loader.set_epoch(epoch)
                loader = accelerator.skip_first_batches(train_loader, state.step_in_epoch) \
                    if state.step_in_epoch else train_loader
                if state.step_in_epoch:
                    loader.set_epoch(epoch)
            else:  # timm reader: it shuffles by epoch itself; a resumed epoch re-reads and drops what was trained
                if hasattr(train_ds, "set_epoch"):
                    train_ds.set_epoch(epoch)
                loader = itertools.islice(train_loader, state.step_in_epoch, None)
            progress = tqdm(total=steps_per_epoch, initial=state.step_in_epoch, desc=f"epoch {epoch}",
                            disable=not (is_main and cfg["progress"]), leave=False)
            loss_sum = torch.zeros((), device=accelerator.device, dtype=torch.float64)
            term_sums: dict[str, torch.Tensor] = {}
            n_steps, t0 = 0, time.time()
            for x, y in loader:
                if not map_style:
                    x, y = x.to(accelerator.device), y.to(accelerator.device)
                if mixup_fn is not None:
                    x, y = mixup_fn(x, y)
                loss, terms = train_step(accelerator, module, teacher, loss_fn, optimizer, x, y,
                                         clip_grad=cfg["clip_grad"], step=state.global_step + 1)
                state.step_in_epoch += 1
                state.images_seen += x.shape[0] * accelerator.num_processes
                loss_sum += loss
                for k, v in terms.items():
                    term_sums[k] = term_sums.get(k, 0.0) + v
                n_steps += 1
                progress.update(1)
                if accelerator.sync_gradients:
                    state.global_step += 1
                    scheduler.step_update(num_updates=state.global_step)
                    if ema is not None:
                        ema.update(accelerator.unwrap_model(module).student, step=state.global_step)
                    if cfg["log_every_steps"] and state.global_step % cfg["log_every_steps"] == 0:
                        rec = {"event": "train", "epoch": epoch, "step": state.global_step,
                               "lr": optimizer.param_groups[0]["lr"], "loss": loss.item(),
                               **{k: v.item() for k, v in terms.items()},
                               "img_per_s": n_steps * x.shape[0] * accelerator.num_processes / (time.time() - t0)}
                        progress.set_postfix(loss=f"{rec['loss']:.3f}")
                        log(rec)
                    if cfg["checkpoint_every_steps"] and state.global_step % cfg["checkpoint_every_steps"] == 0:
                        _save_checkpoint(accelerator, output_dir, state, cfg["checkpoints_total_limit"])
            progress.close()
            scheduler.step(epoch + 1)
            epoch_record = {"event": "epoch", "epoch": epoch, "step": state.global_step,
                            "train_loss": (loss_sum / max(n_steps, 1)).item() if n_steps else None,
                            **{f"train_{k}": (v / n_steps).item() for k, v in term_sums.items()},
                            "images_seen": state.images_seen, "epoch_time_s": time.time() - t0}
            if (epoch + 1) % cfg["eval_every_epochs"] == 0 or epoch + 1 == cfg["epochs"]:
                last_eval = evaluate(accelerator, eval_model(), eval_loader, pre_sharded=not map_style)
                epoch_record.update(last_eval)
                if last_eval["top1"] > state.best["top1"]:
                    state.best = {"top1": last_eval["top1"], "top5": last_eval["top5"], "epoch": epoch}
                accelerator.print(f"epoch {epoch}: train_loss {epoch_record['train_loss']:.4f}  top1 "
                                  f"{last_eval['top1']:.2f}  top5 {last_eval['top5']:.2f}  "
                                  f"({last_eval['eval_count']} images)")
            state.history.append(epoch_record)
            log(epoch_record)
            state.epoch, state.step_in_epoch = epoch + 1, 0
            _save_checkpoint(accelerator, output_dir, state, cfg["checkpoints_total_limit"])
    except NonFiniteLossError as e:
        found = find_checkpoints(output_dir)
        last_good = str(found[-1]) if found else "none (no checkpoint was written yet)"
        if is_main:
            with open(output_dir / "failure.json", "w") as f:
                json.dump({"error": str(e), "step": state.global_step + 1, "epoch": state.epoch,
                           "last_good_checkpoint": last_good}, f, indent=2)
        accelerator.end_training()
        raise NonFiniteLossError(
            f"{e} Stopped at epoch {state.epoch}, batch {state.step_in_epoch}; no checkpoint was written after it. "
            f"Last good checkpoint: {last_good} (resume with --resume after lowering lr, enabling clip_grad or "
            "using bf16 instead of fp16).") from None

    if not last_eval:  # resumed after the last epoch had finished
        last_eval = evaluate(accelerator, eval_model(), eval_loader, pre_sharded=not map_style)

    # ---- summary and export ----------------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    final_model = eval_model()
    summary = {
        "status": "completed", "method": method, "model": str(cfg["model"]), "teacher": cfg["teacher"],
        "top1": last_eval["top1"], "top5": last_eval["top5"], "eval_loss": last_eval["eval_loss"],
        "eval_count": last_eval["eval_count"], "best_top1": state.best["top1"], "best_top5": state.best["top5"],
        "best_epoch": state.best["epoch"], "epochs": cfg["epochs"], "images_seen": state.images_seen,
        "global_steps": state.global_step, "num_processes": accelerator.num_processes,
        "num_params": sum(p.numel() for p in final_model.parameters()), "num_classes": num_classes,
        "label_names": list(classes) if classes else None, "data_config": _json_safe(data_config),
        "setup": _json_safe(setup_info), "resumed_from": str(resumed_from) if resumed_from else None,
        "train_time_s": time.time() - start_time, "history": state.history, "export_dir": None,
        "config": _json_safe(cfg),
    }
    if cfg["export"] and is_main:
        card = {
            "teacher": cfg["teacher"], "method": method,
            "dataset": cfg["dataset"] if cfg["dataset"] in ("fashion_mnist",) else (cfg["hf_name"] or cfg["dataset"]),
            "metrics": {"top1": round(last_eval["top1"], 2), "top5": round(last_eval["top5"], 2)},
            "eval_split": cfg["eval_split"] if cfg["dataset"] != "fashion_mnist" else "test",
            "recipe": _json_safe({k: cfg[k] for k in (
                "epochs", "global_batch_size", "opt", "lr", "weight_decay", "warmup_epochs", "alpha", "kd_type",
                "temperature", "beta", "feature_weight", "feature_loss", "feature_adapter", "label_smoothing",
                "teacher_layer", "student_layer", "repeated_aug", "auto_augment", "reprob", "mixup", "cutmix")}
                | {"images_seen": state.images_seen, "num_processes": accelerator.num_processes}),
        }
        writer = export_model(final_model, output_dir / "export", model_args=cfg["model_kwargs"],
                              data_config=data_config, label_names=summary["label_names"], card=card,
                              benchmark_seconds=cfg["export_benchmark_seconds"])
        summary["export_dir"], summary["export_writer"] = str(output_dir / "export"), writer
    if is_main:
        tmp = output_dir / ".summary.json.tmp"
        tmp.write_text(json.dumps(_json_safe(summary), indent=2))
        os.replace(tmp, output_dir / "summary.json")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary
