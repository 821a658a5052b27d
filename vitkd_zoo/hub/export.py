"""``save_pretrained``: write a Hub-ready folder (``model.safetensors``, timm-format ``config.json``, ``README.md``).

The folder is what timm's ``local-dir:`` / ``hf-hub:`` loaders and transformers' ``TimmWrapper`` read:

- ``model.safetensors`` only (never a pickled ``.bin``);
- ``config.json`` from timm's ``save_for_hf`` with ``model_args`` completed to every architecture argument and
  **without** ``model_args.num_classes`` (transformers 5.x passes ``num_classes`` itself and would otherwise raise
  "got multiple values for keyword argument 'num_classes'"), plus a ``vitkd`` block (teacher, method, recipe,
  metrics, measured cost, package version, sha256 of the weights) and an ``auto_map`` for ``trust_remote_code``;
- ``vitkd_remote.py``, the ~20-line ``trust_remote_code`` entry point that imports vitkd_zoo;
- ``README.md``, the model card rendered from the above.

Writes are atomic: everything is written and verified in a temporary sibling folder, which is renamed into place
only when complete; on any error it is removed and an existing folder is left as it was.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn as nn

from ..models import STUDENT_ARCHITECTURES, sha256_file
from ..version import __version__
from .card import CardInfo, render_card
from .errors import ExportError, UnregisteredModelError

__all__ = ["save_pretrained", "REMOTE_CODE_FILE", "AUTO_MAP", "WEIGHTS_NAME"]

_logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
REMOTE_CODE_FILE = "vitkd_remote.py"
AUTO_MAP = {
    "AutoConfig": "vitkd_remote.VitKDConfig",
    "AutoModel": "vitkd_remote.VitKDModel",
    "AutoModelForImageClassification": "vitkd_remote.VitKDForImageClassification",
}
REMOTE_CODE = '''"""transformers `trust_remote_code=True` entry point for a vitkd_zoo student (written by vitkd_zoo).

It only imports vitkd_zoo, which registers the student architectures with timm, and reuses transformers' own
TimmWrapper classes. Without `trust_remote_code`, run `import vitkd_zoo` yourself before `from_pretrained`.
"""
try:
    import vitkd_zoo  # noqa: F401  (registers deit_tiny_lift, deit_tiny_widelast, ... with timm)
except ImportError as e:
    raise ImportError(
        "This model is a vitkd_zoo student (arXiv 2511.15572): `pip install vitkd-zoo`, then `import vitkd_zoo` "
        "before timm.create_model / from_pretrained (or keep trust_remote_code=True)."
    ) from e
from transformers import TimmWrapperConfig, TimmWrapperForImageClassification, TimmWrapperModel


class VitKDConfig(TimmWrapperConfig):
    model_type = "timm_wrapper"  # keeps transformers' timm weight-name mapping


class VitKDModel(TimmWrapperModel):
    config_class = VitKDConfig


class VitKDForImageClassification(TimmWrapperForImageClassification):
    config_class = VitKDConfig
'''

# Preprocessing keys a caller may set for the exported weights (timm data config names).
_DATA_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


def _architecture(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    arch = cfg.get("architecture")
    if not arch:
        raise UnregisteredModelError(
            f"{type(model).__name__} was not built by timm.create_model, so there is no registered architecture "
            "to write into config.json and nothing could rebuild it from the Hub. Build it with "
            "timm.create_model('<registered name>', ...) or vitkd_zoo.create_model (after `import vitkd_zoo`), or "
            "register your own class with @timm.models.register_model."
        )
    if not timm.is_model(arch):
        raise UnregisteredModelError(
            f"{type(model).__name__} says its architecture is {arch!r}, which is not registered with timm in this "
            "process. Import the package that registers it (for vitkd_zoo students: `import vitkd_zoo`) or register "
            "it with @timm.models.register_model before exporting."
        )
    return arch


def _student_args(model: nn.Module, arch: str) -> dict[str, Any]:
    """Architecture arguments the entry point fills itself (timm records only the caller's kwargs)."""
    if arch not in STUDENT_ARCHITECTURES:
        return {}
    args: dict[str, Any] = dict(
        patch_size=model.patch_embed.patch_size[0],
        embed_dim=model.embed_dim,
        depth=len(model.blocks),
        num_heads=model.blocks[0].attn.num_heads,
    )
    if hasattr(model, "lift_dim"):
        args["lift_dim"] = model.lift_dim
    if hasattr(model, "wide_dim"):
        args["wide_dim"] = model.wide_dim
        args["wide_heads"] = model.blocks[-1].attn.num_heads
    return args


def _baseline_args(model_args: Mapping[str, Any], num_classes: int) -> tuple[str, dict[str, Any]]:
    """Same-shape plain DeiT for the card's cost table: the student's trunk without Lift/WideLast."""
    keys = ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads", "mlp_ratio")
    args = {k: model_args[k] for k in keys if k in model_args}
    args["num_classes"] = num_classes
    name = "deit_small_patch16_224" if model_args.get("embed_dim") == 384 else "deit_tiny_patch16_224"
    return name, args


def _measure_cost(model: nn.Module, arch: str, model_args: Mapping[str, Any], input_size, seconds: float,
                  batch_size: int) -> tuple[list[dict], str]:
    """Params, GMACs and CPU img/s of the model and (for students) its same-trunk DeiT baseline, timed together."""
    from ..commands.models import count_gmacs, count_params, images_per_second

    input_size = tuple(input_size)
    if any(p.device.type != "cpu" or p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float().cpu()  # the card's cost is measured on CPU in fp32
    models = {arch: model}
    labels = {arch: (f"**{arch}** (this model)", "model")}
    if arch in STUDENT_ARCHITECTURES:
        name, args = _baseline_args(model_args, model.num_classes)
        models[name] = timm.create_model(name, **args)
        labels[name] = (f"{name} (same trunk, no Lift/WideLast)", "baseline")
    was_training = model.training
    for m in models.values():
        m.eval()
    try:
        speed = images_per_second(models, input_size, batch_size, seconds)
        rows = [dict(role=labels[name][1], label=labels[name][0], model=name, params=count_params(m),
                     gmacs=round(count_gmacs(m, input_size), 4), img_per_s=round(speed[name], 1))
                for name, m in models.items()]
    finally:
        model.train(was_training)
    note = (f"Params and GMACs (multiply-accumulates per image at {' x '.join(map(str, input_size))}, attention "
            f"included) are exact; img/s is CPU throughput measured at export ({torch.get_num_threads()} threads, "
            f"batch {batch_size}, fp32, median of interleaved rounds) and only comparable within this table.")
    return rows, note


def _write_folder(
        model: nn.Module, folder: Path, info: CardInfo, data_config: Mapping[str, Any] | None, repo_id: str | None,
        remote_code: bool, benchmark_seconds: float, batch_size: int,
) -> None:
    from timm.models import save_for_hf

    arch = _architecture(model)
    label_names = list(info.label_names) if info.label_names else None
    inherited = model.pretrained_cfg.get("label_names")
    if label_names is None and inherited and len(inherited) == model.num_classes:  # e.g. re-exporting a folder
        label_names = list(inherited)
        info = dataclasses.replace(info, label_names=label_names)
    if label_names is not None and len(label_names) != model.num_classes:
        raise ValueError(f"{len(label_names)} label names for a {model.num_classes}-class head")
    extra = {k: v for k, v in (data_config or {}).items() if k not in _DATA_KEYS}
    if extra:
        raise ValueError(f"Unknown data_config keys {sorted(extra)}; allowed: {_DATA_KEYS}")
    model_config: dict[str, Any] = {"pretrained_cfg": {
        "tag": None, "description": info.description or f"{arch} exported with vitkd_zoo {__version__}",
        "license": info.license, "notes": None,
    }}
    if label_names:
        model_config["label_names"] = label_names
    save_for_hf(model, str(folder), model_config=model_config, model_args=_student_args(model, arch),
                safe_serialization=True, data_config=dict(data_config) if data_config else None)
    with open(folder / "config.json", encoding="utf-8") as f:
        config = json.load(f)
    # transformers' TimmWrapper passes num_classes itself: a second one in model_args is a TypeError (ecosystem.md §5).
    config["model_args"].pop("num_classes", None)
    config["pretrained_cfg"] = {k: v for k, v in config["pretrained_cfg"].items() if v is not None}
    config.pop("model_type", None)
    input_size = config["pretrained_cfg"]["input_size"]
    cost, cost_note = _measure_cost(model, arch, config["model_args"], input_size, benchmark_seconds, batch_size)
    config["vitkd"] = {
        **{k: v for k, v in info.to_dict().items() if k in ("teacher", "method", "recipe", "metrics", "dataset")},
        "package_version": __version__,
        "weights_file": WEIGHTS_NAME,
        "weights_sha256": sha256_file(folder / WEIGHTS_NAME),
        "cost": cost,
        "cost_note": cost_note,
        "card": info.to_dict(),
    }
    if remote_code:
        config["auto_map"] = dict(AUTO_MAP)
        (folder / REMOTE_CODE_FILE).write_text(REMOTE_CODE, encoding="utf-8")
    with open(folder / "config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    _verify_folder(model, folder)
    render_card(config, repo_id=repo_id).save(str(folder / "README.md"))


def _verify_folder(model: nn.Module, folder: Path) -> None:
    """Rebuild the model from the folder through timm's own ``local-dir:`` path and compare every tensor."""
    try:
        rebuilt = timm.create_model(f"local-dir:{folder}", pretrained=True)
    except Exception as e:
        raise ExportError(f"config.json does not rebuild {type(model).__name__}: {e}") from e
    if type(rebuilt) is not type(model):
        raise ExportError(f"config.json rebuilds a {type(rebuilt).__name__}, not a {type(model).__name__}: pass the "
                          "architecture arguments the model was built with")
    ours, theirs = model.state_dict(), rebuilt.state_dict()
    bad = sorted(k for k in ours.keys() | theirs.keys()
                 if k not in ours or k not in theirs or not torch.equal(ours[k].cpu(), theirs[k].to(ours[k].dtype)))
    if bad:
        raise ExportError(f"Reloading the export does not reproduce the model's weights: {', '.join(bad[:8])}")


def save_pretrained(
        model: nn.Module,
        out_dir: str | os.PathLike,
        *,
        card: CardInfo | Mapping[str, Any] | None = None,
        data_config: Mapping[str, Any] | None = None,
        repo_id: str | None = None,
        overwrite: bool = False,
        remote_code: bool = True,
        benchmark_seconds: float | None = None,
        batch_size: int = 16,
) -> Path:
    """Write ``model`` as a Hub-ready folder, atomically.

    Args:
        model: a model built by ``timm.create_model`` / ``vitkd_zoo.create_model`` (any registered architecture).
        out_dir: the folder to create.
        card: what the card and ``config.json``'s ``vitkd`` block state (``CardInfo`` or a dict of its fields).
        data_config: preprocessing of the exported weights if it differs from the architecture's default
            (``mean``, ``std``, ``crop_pct``, ``interpolation``, ``crop_mode``, ``input_size``).
        repo_id: the Hub repo the card's snippets name (``push_to_hub`` regenerates the card with the real one).
        overwrite: replace an existing ``out_dir`` (atomically: the old folder stays until the new one is complete).
        remote_code: also write ``vitkd_remote.py`` + ``auto_map`` for transformers' ``trust_remote_code=True``.
        benchmark_seconds: CPU timing window per model for the card's img/s column (default:
            ``$VITKD_BENCHMARK_SECONDS`` or 2.0).
        batch_size: batch size of that timing.

    Returns:
        The folder path.

    Raises:
        UnregisteredModelError: the model's class is not a registered timm architecture.
        ExportError: the written config/weights do not rebuild the model exactly.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.

    Example:
        >>> model = timm.create_model("deit_tiny_lift", num_classes=10)
        >>> save_pretrained(model, "exported/deit_tiny_lift-demo", card=dict(dataset="fashion_mnist"))
    """
    out_dir = Path(out_dir)
    if benchmark_seconds is None:
        benchmark_seconds = float(os.environ.get("VITKD_BENCHMARK_SECONDS") or 2.0)
    info = card if isinstance(card, CardInfo) else CardInfo.from_dict(card)
    if repo_id is not None:
        from .publish import check_repo_id

        check_repo_id(repo_id)
    _architecture(model)  # fail before touching the disk
    if out_dir.exists() and not overwrite:
        raise FileExistsError(f"{out_dir} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _write_folder(model, tmp, info, data_config, repo_id, remote_code, benchmark_seconds, batch_size)
        os.chmod(tmp, 0o755)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _logger.info("Exported %s to %s", _architecture(model), out_dir)
    return out_dir
