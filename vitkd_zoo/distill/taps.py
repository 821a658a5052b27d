"""Feature taps: logits and one token map from a single forward pass, without hooks.

* Lift / WideLast students expose ``forward_distill(x) -> (logits, feature)``: the exact tensor the paper distills
  (Lift: lifted + LayerNorm'd patch tokens; WideLast: raw last-block patch tokens).
* Any timm ViT-like model (plain DeiT baselines, CaiT teachers) is tapped through ``forward_intermediates``:
  the raw output of block ``layer`` (pre final norm, patch tokens only, NCHW) plus the logits from the final
  features it returns (``forward_head``), so the teacher runs once.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn as nn

__all__ = ["LayerNotFoundError", "num_blocks", "resolve_layer", "FeatureTap", "DISTILL_LAYER"]

#: ``layer`` value meaning "the paper's distilled feature" (``forward_distill``; last block for plain ViTs).
DISTILL_LAYER = "distill"


class LayerNotFoundError(ValueError):
    """The requested block index does not exist in the model (or the model cannot be tapped)."""


def num_blocks(model: nn.Module) -> int:
    """Blocks ``forward_intermediates`` can return (CaiT: its self-attention blocks, not the class-attention ones)."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        stages = getattr(model, "stages", None)
        if stages is None:
            raise LayerNotFoundError(f"{type(model).__name__} has no `blocks`/`stages`: it cannot be tapped")
        return len(stages)
    return len(blocks)


def resolve_layer(model: nn.Module, layer: int | str | None, role: str = "model") -> int | str:
    """Normalise ``layer`` (``None``/``'distill'``/``'last'``/negative index) and check it exists."""
    if layer is None or layer == DISTILL_LAYER:
        return DISTILL_LAYER if hasattr(model, "forward_distill") else num_blocks(model) - 1
    if layer == "last":
        layer = -1
    if isinstance(layer, str):
        try:
            layer = int(layer)
        except ValueError:
            raise LayerNotFoundError(f"{role} layer must be an int, 'last' or 'distill', got {layer!r}") from None
    if not hasattr(model, "forward_intermediates"):
        raise LayerNotFoundError(f"{role} {type(model).__name__} has no forward_intermediates: it cannot be tapped")
    n = num_blocks(model)
    index = layer + n if layer < 0 else layer
    if not 0 <= index < n:
        raise LayerNotFoundError(
            f"{role} {type(model).__name__} has {n} blocks (indices 0..{n - 1} or -1..-{n}); there is no layer "
            f"{layer}. For CaiT the index counts the self-attention blocks only (cait_s24: 0..23).")
    return index


class FeatureTap:
    """Run ``model`` once; return ``(logits, feature NCHW or None)``.

    Args:
        model: the network (student or teacher).
        layer: ``'distill'`` (``forward_distill`` if the model has it, else the last block), or a block index.
        with_feature: False returns ``(model(x), None)``: the plain forward, for runs without a feature loss.
    """

    def __init__(self, model: nn.Module, layer: int | str | None = DISTILL_LAYER, with_feature: bool = True,
                 role: str = "model"):
        self.model = model  # not a registered submodule: the tap never duplicates the model's state_dict
        self.layer = resolve_layer(model, layer, role) if with_feature else None
        self.with_feature = with_feature
        self._fi_kwargs = {}
        if with_feature and self.layer != DISTILL_LAYER:
            params = inspect.signature(model.forward_intermediates).parameters
            if "return_prefix_tokens" in params:
                self._fi_kwargs["return_prefix_tokens"] = False

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not self.with_feature:
            return self.model(x), None
        if self.layer == DISTILL_LAYER:
            return self.model.forward_distill(x)
        final, intermediates = self.model.forward_intermediates(
            x, indices=[self.layer], norm=False, output_fmt="NCHW", **self._fi_kwargs)
        return self.model.forward_head(final), intermediates[0]

    def feature_shape(self, input_size: tuple[int, int, int]) -> tuple[int, int, int]:
        """``(C, H, W)`` of the tapped feature for one input of ``input_size`` (a dry run on a zero image)."""
        p = next(self.model.parameters())
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                _, feature = self(torch.zeros(1, *input_size, device=p.device, dtype=p.dtype))
        finally:
            self.model.train(was_training)
        return tuple(feature.shape[1:])
