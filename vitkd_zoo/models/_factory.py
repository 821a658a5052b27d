"""``vitkd_zoo.create_model``: ``timm.create_model`` plus a safe ``checkpoint_path`` and errors that say what to do."""
from __future__ import annotations

import difflib
import os
from typing import Any

import timm
import torch.nn as nn

from ._checkpoint import CorruptCheckpointError, UnsafeCheckpointError, load_checkpoint_file, unwrap_state_dict

__all__ = ["STUDENT_ARCHITECTURES", "UnknownModelError", "create_model", "unknown_model_message"]

STUDENT_ARCHITECTURES = ("deit_tiny_lift", "deit_small_lift", "deit_tiny_widelast", "deit_small_widelast")


class UnknownModelError(RuntimeError):
    """A model name timm does not know; the message suggests close names and the missing import."""


def unknown_model_message(name: str) -> str:
    arch = name.split(":")[-1].split(".")[0]
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.75)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return (f"Unknown model {arch!r}.{hint} vitkd_zoo's students ({', '.join(STUDENT_ARCHITECTURES)}) exist in timm "
            "only after `import vitkd_zoo` (pip install vitkd-zoo); import it before timm.create_model or "
            "transformers' from_pretrained.")


def create_model(
        model_name: str,
        pretrained: bool = False,
        *,
        checkpoint_path: str | os.PathLike | None = None,
        **kwargs: Any,
) -> nn.Module:
    """Build any timm or vitkd_zoo model, optionally from a local checkpoint.

    Args:
        model_name: registry name (``deit_tiny_lift``, ``deit_tiny_lift.kd_cait_s24_in1k``), ``hf-hub:org/name``
            or ``local-dir:/path``.
        pretrained: load the weights the name points to.
        checkpoint_path: a ``.safetensors`` or ``.pth`` file (the authors' training checkpoints, our exports, or
            plain timm weights for a trunk init); read with ``weights_only=True``. ``num_classes`` defaults to the
            checkpoint's head.
        **kwargs: passed to ``timm.create_model``.

    Raises:
        UnknownModelError, FileNotFoundError, CorruptCheckpointError, UnsafeCheckpointError, CheckpointMismatchError.
    """
    try:
        if checkpoint_path is None:
            return timm.create_model(model_name, pretrained=pretrained, **kwargs)
        state_dict = unwrap_state_dict(load_checkpoint_file(checkpoint_path))
        if "num_classes" not in kwargs and "head.weight" in state_dict:
            kwargs["num_classes"] = state_dict["head.weight"].shape[0]
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {}, state_dict=state_dict)
        if "num_classes" in kwargs:  # else timm drops the head as "a different number of classes"
            overlay["num_classes"] = kwargs["num_classes"]
        return timm.create_model(model_name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
    except RuntimeError as e:
        message = str(e)
        if message.startswith("Unknown model"):
            raise UnknownModelError(unknown_model_message(model_name)) from e
        if "weights_only" in message and "pickle" in message:
            raise UnsafeCheckpointError(
                f"The weights for {model_name!r} need pickle to load, and vitkd_zoo loads .pth only with "
                f"weights_only=True. Export them to safetensors from a trusted environment. ({message.splitlines()[0]})"
            ) from e
        raise
    except Exception as e:
        if type(e).__name__ == "SafetensorError":
            raise CorruptCheckpointError(
                f"The safetensors weights for {model_name!r} are truncated or corrupt ({e}). Delete the cached or "
                "exported file and download or export it again."
            ) from e
        raise
