"""Checkpoint reading and key checks shared by the student families, with errors that say what to do.

timm's own loaders raise low-level errors (a safetensors header error, a pickle allow-list error, a bare
``load_state_dict`` key dump). vitkd_zoo reads files itself where it can (``load_checkpoint_file``) and checks a
converted state dict against the model before timm loads it (``check_state_dict``).
"""
from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

_logger = logging.getLogger(__name__)

__all__ = [
    "CheckpointError", "CorruptCheckpointError", "UnsafeCheckpointError", "CheckpointMismatchError",
    "load_checkpoint_file", "unwrap_state_dict", "check_state_dict", "init_from_plain_vit", "sha256_file",
]


class CheckpointError(ValueError):
    """Base class: a weights file or state dict that vitkd_zoo cannot use."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated or not the format its extension claims."""


class UnsafeCheckpointError(CheckpointError):
    """A ``.pth`` that needs arbitrary pickle to load (vitkd_zoo loads ``weights_only=True`` only)."""


class CheckpointMismatchError(CheckpointError):
    """The state dict does not fit the model: names the missing, unexpected and mis-shaped keys."""


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``.safetensors`` or ``.pth``/``.pt``/``.bin`` into a dict on CPU, safely.

    ``.pth`` files are read with ``weights_only=True`` (``argparse.Namespace`` allowed, as in timm and the
    authors' training checkpoints). Raises ``FileNotFoundError``, ``CorruptCheckpointError`` or
    ``UnsafeCheckpointError`` with the file name and the fix.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError, ValueError) as e:
            raise CorruptCheckpointError(
                f"{path} is not a readable safetensors file ({e}). It is probably truncated or corrupt "
                f"(size {path.stat().st_size} bytes, sha256 {sha256_file(path)[:12]}…): download or export it again."
            ) from e
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(
            f"{path} needs pickle to load objects other than tensors, and vitkd_zoo only loads .pth files with "
            f"torch.load(weights_only=True). If you trust the file, re-save its state dict once, e.g. "
            f"`torch.save(torch.load(path, weights_only=False)['model'], 'clean.pth')`, or export it to "
            f"safetensors. Details: {str(e).splitlines()[0]}"
        ) from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise CorruptCheckpointError(
            f"{path} could not be read as a PyTorch checkpoint ({str(e).splitlines()[0]}). It is probably truncated "
            f"or corrupt (size {path.stat().st_size} bytes): download or save it again."
        ) from e


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Pick the raw model weights out of a training checkpoint (``model`` before ``state_dict``; never EMA:
    the authors evaluate the raw model)."""
    for key in ("model", "state_dict"):
        if key in checkpoint and isinstance(checkpoint[key], Mapping):
            checkpoint = checkpoint[key]
            break
    out = {}
    for k, v in checkpoint.items():
        if torch.is_tensor(v):
            out[k[7:] if k.startswith("module.") else k] = v
    return out


def check_state_dict(
        state_dict: Mapping[str, torch.Tensor], model: nn.Module, source: str, ignore_prefixes: tuple[str, ...] = ("head.",),
) -> None:
    """Raise ``CheckpointMismatchError`` unless ``state_dict`` fits ``model`` exactly.

    Keys under ``ignore_prefixes`` (the classifier) may differ in shape: timm swaps the head when ``num_classes``
    changes.
    """
    target = model.state_dict()
    missing = sorted(k for k in target if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in target)
    shapes = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(target[k].shape)}"
        for k in state_dict
        if k in target and state_dict[k].shape != target[k].shape and not k.startswith(ignore_prefixes)
    )
    if not (missing or unexpected or shapes):
        return
    parts = [f"The {source} does not fit {type(model).__name__} "
             f"(embed_dim={getattr(model, 'embed_dim', '?')}, num_features={getattr(model, 'num_features', '?')}, "
             f"depth={len(getattr(model, 'blocks', []))})."]
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", shapes)):
        if keys:
            parts.append(f"{title} ({len(keys)}): {', '.join(keys[:8])}{' …' if len(keys) > 8 else ''}")
    parts.append("Check that the architecture name and its arguments (embed_dim, depth, lift_dim / wide_dim, "
                 "patch_size, img_size, in_chans) match the checkpoint's, e.g. from its config.json.")
    raise CheckpointMismatchError("\n  ".join(parts))


def init_from_plain_vit(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Initialise a student from plain timm ViT/DeiT weights: the trunk loads, the parts the student adds or
    widens keep their fresh initial values, and the log names both lists (nothing is dropped silently).

    Returns a complete state dict so timm's strict load passes.
    """
    from timm.models.vision_transformer import checkpoint_filter_fn as vit_filter

    state_dict = vit_filter(state_dict, model)  # resamples pos_embed / patch_embed, converts foreign layouts
    target = model.state_dict()
    loaded = {k: v for k, v in state_dict.items() if k in target and v.shape == target[k].shape}
    not_used = sorted(k for k in state_dict if k not in loaded)
    kept_init = sorted(k for k in target if k not in loaded)
    trunk = [k for k in target if k.startswith(("blocks.", "patch_embed.", "pos_embed", "cls_token"))]
    if sum(k in loaded for k in trunk) < len(trunk) // 2:
        raise CheckpointMismatchError(
            f"The checkpoint matches only {sum(k in loaded for k in trunk)} of {len(trunk)} trunk tensors of "
            f"{type(model).__name__}: it is not a ViT/DeiT of this width and depth. Unused keys: "
            f"{', '.join(not_used[:8])}{' …' if len(not_used) > 8 else ''}"
        )
    _logger.warning(
        "Initialised %s from plain ViT weights: %d tensors loaded; not used (absent or other shape): %s; "
        "left at their initial values: %s",
        type(model).__name__, len(loaded), ", ".join(not_used) or "none", ", ".join(kept_init) or "none",
    )
    return {**{k: target[k] for k in kept_init}, **loaded}
