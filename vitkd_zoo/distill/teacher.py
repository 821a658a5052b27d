"""A frozen teacher: any timm model (registry name, ``hf-hub:`` id, ``local-dir:`` export or checkpoint file).

Kept out of the student's module on purpose (Accelerate does not ``prepare`` it: no DDP wrapper, no gradients,
``.train()`` on the student never flips it): ``eval()``, ``requires_grad_(False)``, run under ``no_grad``,
optionally in bf16 weights and ``torch.compile``d. One forward returns the logits and the tapped feature.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from .taps import DISTILL_LAYER, FeatureTap

__all__ = ["FrozenTeacher", "create_teacher", "resolve_model_name"]

_logger = logging.getLogger(__name__)


def resolve_model_name(name: str) -> str:
    """A plain folder holding ``config.json`` (an export) becomes ``local-dir:<folder>``."""
    if ":" not in name and os.sep in name or (":" not in name and Path(name).is_dir()):
        folder = Path(name)
        if (folder / "config.json").is_file():
            return f"local-dir:{folder.resolve()}"
        raise FileNotFoundError(f"{name!r} looks like a path but holds no config.json (expected an exported model "
                                "folder; for a weights file use `teacher_checkpoint` with the architecture name)")
    return name


def create_teacher(
        name: str,
        *,
        checkpoint: str | None = None,
        pretrained: bool = True,
        num_classes: int | None = None,
        **kwargs: Any,
) -> nn.Module:
    """Build the teacher network with ``vitkd_zoo.create_model`` (which imports our architectures first).

    ``hf-hub:`` and ``local-dir:`` names always load their weights; registry names load timm's pretrained weights
    unless ``pretrained=False`` (only useful in tests); ``checkpoint`` loads a ``.safetensors``/``.pth`` file.
    """
    from vitkd_zoo.models import create_model

    name = resolve_model_name(name)
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    if checkpoint is not None:
        return create_model(name, checkpoint_path=checkpoint, **kwargs)
    if name.startswith(("hf-hub:", "local-dir:")):
        pretrained = True
    return create_model(name, pretrained=pretrained, **kwargs)


class FrozenTeacher:
    """Frozen teacher with input re-normalisation and a single tapped forward.

    Args:
        model: the teacher network (any timm model with ``forward_intermediates`` when a feature is needed).
        layer: teacher block whose raw output is distilled (CaiT-S24: 23, its last self-attention block).
        with_feature: tap a feature (False: logits only).
        input_mean, input_std: the normalisation of the batches it receives (the student's); when the teacher's
            ``pretrained_cfg`` mean/std differ, the batch is un-normalised and re-normalised for the teacher.
        dtype: cast the weights (``torch.bfloat16`` halves the teacher's cost on GPUs); outputs stay as computed
            and the losses cast to fp32.
        compile: ``torch.compile`` the tapped forward.
        fused_attention: run CaiT's talking-heads attention through the exact fused-SDPA rewrite
            (``fast_cait.py``). None (default): on CUDA devices only, where fused kernels pay off; the plain timm
            path is kept on the CPU and for other teachers.
    """

    def __init__(
            self,
            model: nn.Module,
            *,
            layer: int | str = -1,
            with_feature: bool = True,
            input_mean: Sequence[float] | None = None,
            input_std: Sequence[float] | None = None,
            teacher_mean: Sequence[float] | None = None,
            teacher_std: Sequence[float] | None = None,
            dtype: torch.dtype | None = None,
            compile: bool = False,
            fused_attention: bool | None = None,
    ):
        model.eval().requires_grad_(False)
        if dtype is not None:
            model.to(dtype=dtype)
        self.model = model
        self.fused_attention, self.fused_layers = fused_attention, 0
        if fused_attention:
            self._use_fused_attention()
        if layer == DISTILL_LAYER:
            layer = -1
        self.tap = FeatureTap(model, layer, with_feature=with_feature, role="teacher")
        self.layer = self.tap.layer
        self._forward = torch.compile(self.tap.__call__) if compile else self.tap
        self._renorm = None
        cfg = getattr(model, "pretrained_cfg", None) or {}
        teacher_mean = teacher_mean if teacher_mean is not None else cfg.get("mean")
        teacher_std = teacher_std if teacher_std is not None else cfg.get("std")
        if None not in (input_mean, input_std, teacher_mean, teacher_std):
            same = (tuple(map(float, input_mean)) == tuple(map(float, teacher_mean))
                    and tuple(map(float, input_std)) == tuple(map(float, teacher_std)))
            if not same:
                if len(teacher_mean) != len(input_mean):
                    _logger.warning("teacher mean/std %s/%s have %d channels, the input %d: not re-normalising "
                                    "(set teacher_mean/teacher_std to override)", teacher_mean, teacher_std,
                                    len(teacher_mean), len(input_mean))
                else:
                    m_in, s_in = torch.tensor(input_mean), torch.tensor(input_std)
                    m_t, s_t = torch.tensor(teacher_mean), torch.tensor(teacher_std)
                    # x_t = (x * s_in + m_in - m_t) / s_t = x * scale + shift
                    scale, shift = s_in / s_t, (m_in - m_t) / s_t
                    self._renorm = (scale.view(1, -1, 1, 1), shift.view(1, -1, 1, 1))

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _use_fused_attention(self) -> None:
        from .fast_cait import use_fused_talking_heads

        self.fused_layers += use_fused_talking_heads(self.model)

    def to(self, device: str | torch.device) -> FrozenTeacher:
        self.model.to(device)
        if self.fused_attention is None and torch.device(device).type == "cuda" and not self.fused_layers:
            self._use_fused_attention()
        if self._renorm is not None:
            self._renorm = tuple(t.to(device) for t in self._renorm)
        return self

    def train(self, mode: bool = True) -> FrozenTeacher:
        """Always stays in eval mode (dropout / drop-path / BN statistics frozen)."""
        return self

    def normalize_input(self, x: torch.Tensor) -> torch.Tensor:
        if self._renorm is None:
            return x
        scale, shift = self._renorm
        return x * scale.to(x.dtype) + shift.to(x.dtype)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.normalize_input(x)
        p_dtype = next(self.model.parameters()).dtype
        if x.dtype != p_dtype and not torch.is_autocast_enabled(x.device.type):
            x = x.to(p_dtype)
        return self._forward(x)

    def feature_shape(self, input_size: tuple[int, int, int]) -> tuple[int, int, int]:
        return self.tap.feature_shape(input_size)
