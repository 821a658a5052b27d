"""Loading exported students with their weights checked against the sha256 in ``config.json`` and the card.

timm's and transformers' own loaders read a bit-flipped ``model.safetensors`` without complaint (only a truncated
one fails, with a low-level safetensors error). ``load_model`` / ``load_transformers`` fetch the folder, check the
weights' sha256 against what the export recorded, then hand over to the normal timm / transformers path, so the
model is exactly what ``timm.create_model("hf-hub:...")`` / ``from_pretrained`` would build.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import torch.nn as nn

# importing ..models registers the students with timm: these loaders never hit "Unknown model"
from ..models import CorruptCheckpointError, UnknownModelError, create_model, sha256_file
from ..models._factory import unknown_model_message
from .errors import WeightsHashMismatchError

__all__ = ["verify_folder", "load_model", "load_transformers", "fetch_folder"]

_logger = logging.getLogger(__name__)
_CARD_SHA = re.compile(r"sha256 `([0-9a-f]{64})`")


def verify_folder(folder: str | os.PathLike) -> dict:
    """Check an exported folder and return its parsed ``config.json``.

    The sha256 of the weights file must equal the one in ``config.json``'s ``vitkd`` block and, when present, the one
    the model card (``README.md``) states.

    Raises:
        FileNotFoundError: no ``config.json`` or weights file.
        WeightsHashMismatchError: the weights differ from what was exported (names the file and both hashes).
    """
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} not found: not an exported model folder (vitkd-zoo export writes one)")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    vitkd = config.get("vitkd") or {}
    weights = folder / vitkd.get("weights_file", "model.safetensors")
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} not found next to {config_path}")
    expected = {}
    if vitkd.get("weights_sha256"):
        expected["config.json"] = vitkd["weights_sha256"]
    card = folder / "README.md"
    if card.is_file():
        found = _CARD_SHA.search(card.read_text(encoding="utf-8", errors="replace"))
        if found:
            expected["the model card (README.md)"] = found.group(1)
    if not expected:
        _logger.warning("%s records no sha256 (not a vitkd_zoo export): weights not checked", folder)
        return config
    actual = sha256_file(weights)
    differs = [where for where, sha in expected.items() if sha != actual]
    if differs:
        raise WeightsHashMismatchError(
            f"{weights}: its sha256 {actual} differs from {expected[differs[0]]} recorded in "
            f"{' and '.join(differs)}. The file is corrupt or was changed after export: delete it and download it "
            "again (or re-export it); do not use these weights."
        )
    return config


def _split_hub(name: str) -> tuple[str, str | None]:
    name = name[len("hf-hub:"):] if name.startswith("hf-hub:") else name[len("hf_hub:"):] if name.startswith("hf_hub:") else name
    repo_id, _, revision = name.partition("@")
    return repo_id, revision or None


def fetch_folder(
        repo_id: str, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
        token: str | None = None,
) -> Path:
    """Download (or find in the cache, ``HF_HUB_OFFLINE=1`` included) a repo's config, weights and card."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    config_path = Path(hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=cache_dir, token=token))
    with open(config_path, encoding="utf-8") as f:
        weights_name = (json.load(f).get("vitkd") or {}).get("weights_file", "model.safetensors")
    hf_hub_download(repo_id, weights_name, revision=revision, cache_dir=cache_dir, token=token)
    try:
        hf_hub_download(repo_id, "README.md", revision=revision, cache_dir=cache_dir, token=token)
    except EntryNotFoundError:
        pass
    return config_path.parent


def _local_dir(name: str) -> Path | None:
    if name.startswith("local-dir:"):
        return Path(name[len("local-dir:"):])
    if os.path.isdir(name):
        return Path(name)
    return None


def load_model(
        name_or_path: str,
        *,
        pretrained: bool = True,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        verify: bool = True,
        **kwargs: Any,
) -> nn.Module:
    """Build a timm model from an exported folder, a Hub repo or a registry name, weights checked.

    Args:
        name_or_path: ``DIR`` / ``local-dir:DIR``, ``ORG/NAME`` / ``hf-hub:ORG/NAME[@rev]``, or a registry name
            (``deit_tiny_lift``, ``deit_tiny_lift.kd_cait_s24_in1k``).
        pretrained: load weights (always, for folders and repos).
        revision: Hub revision (or ``@rev`` in the name).
        cache_dir: Hub cache to use instead of ``HF_HUB_CACHE``.
        verify: check the sha256 of exported weights (folders and repos) before loading them.
        **kwargs: passed to ``timm.create_model`` (``num_classes=N`` for a new head, ``features_only=True``, ...).

    Raises:
        WeightsHashMismatchError, CorruptCheckpointError, UnknownModelError, huggingface_hub's
        ``LocalEntryNotFoundError`` (offline and not cached) / ``RepositoryNotFoundError``.
    """
    local = _local_dir(name_or_path)
    if local is not None:
        if verify:
            verify_folder(local)
        return create_model(f"local-dir:{local}", pretrained=True, **kwargs)
    if "/" in name_or_path or name_or_path.startswith(("hf-hub:", "hf_hub:")):
        repo_id, at_rev = _split_hub(name_or_path)
        revision = revision or at_rev
        if verify:
            verify_folder(fetch_folder(repo_id, revision=revision, cache_dir=cache_dir))
        hub_name = f"hf-hub:{repo_id}" + (f"@{revision}" if revision else "")
        return create_model(hub_name, pretrained=True, cache_dir=cache_dir, **kwargs)
    return create_model(name_or_path, pretrained=pretrained, cache_dir=cache_dir, **kwargs)


def load_transformers(
        name_or_path: str,
        *,
        auto_class: str = "AutoModelForImageClassification",
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        verify: bool = True,
        **kwargs: Any,
):
    """``transformers.<auto_class>.from_pretrained`` for an exported folder or Hub repo, weights checked.

    ``auto_class`` is ``"AutoModelForImageClassification"`` or ``"AutoModel"``; ``kwargs`` go to ``from_pretrained``
    (``num_labels=N, ignore_mismatched_sizes=True`` for a new head).
    """
    import transformers

    local = _local_dir(name_or_path)
    if local is not None:
        target = str(local)
        if verify:
            verify_folder(local)
    else:
        target, at_rev = _split_hub(name_or_path)
        revision = revision or at_rev
        if verify:
            verify_folder(fetch_folder(target, revision=revision, cache_dir=cache_dir))
    cls = getattr(transformers, auto_class)
    try:
        return cls.from_pretrained(target, revision=revision, cache_dir=cache_dir, **kwargs)
    except ImportError as e:
        if "not supported in your version of timm" in str(e):
            arch = re.search(r"architecture '([^']+)'", str(e))
            raise UnknownModelError(unknown_model_message(arch.group(1) if arch else target)) from e
        raise
    except Exception as e:
        if type(e).__name__ == "SafetensorError":
            raise CorruptCheckpointError(f"The weights of {name_or_path} are truncated or corrupt ({e}).") from e
        raise
