"""Lift students: a ViT whose last-block tokens are lifted to the teacher's width, kept at inference.

From "From Per-Image Low-Rank to Encoding Mismatch: Rethinking Feature Distillation in Vision Transformers"
(Tian, Xu, Li; ICML 2026) - https://arxiv.org/abs/2511.15572

A narrow student cannot reproduce a wide teacher's token encoding, so Lift adds a bias-free ``Linear(D -> D_t)``
and ``LayerNorm(D_t)`` on the raw last-block patch tokens, distills that lifted map directly against the teacher's
last-block tokens, and classifies from its global average. DeiT-Tiny <- CaiT-S24 on ImageNet-1k: 74.86 -> 77.53.

The lift *is* this model's final per-token transform, so it lives in timm's ``self.norm`` slot: every timm path
(``forward_features``, ``forward_intermediates(norm=True)``, transformers' hidden states) sees lifted tokens.

Weights: the authors' checkpoint ``Huiyuancs/Encoding_Mismatch`` (``models/Lift/pytorch_model.pth``) converts on
load. Code and weight layout: https://github.com/thy960112/From-Per-Image-Low-Rank-to-Encoding-Mismatch
"""
from __future__ import annotations

import re

import torch
import torch.nn as nn
from timm.layers import get_device_dtype
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import VisionTransformer, init_weights_vit_timm

from ._checkpoint import check_state_dict, init_from_plain_vit, unwrap_state_dict
from ._student import AUTHORS_WEIGHTS, StudentMixin, student_cfg

__all__ = ["VisionTransformerLift", "LiftProjector"]


class LiftProjector(nn.Module):
    """Per-token ``Linear(in_dim -> out_dim, bias=False)`` then ``LayerNorm(out_dim)`` (eps 1e-5, as the authors)."""

    def __init__(self, in_dim: int, out_dim: int, eps: float = 1e-5, device=None, dtype=None):
        super().__init__()
        dd = dict(device=device, dtype=dtype)
        self.proj = nn.Linear(in_dim, out_dim, bias=False, **dd)
        self.ln = nn.LayerNorm(out_dim, eps=eps, **dd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.proj(x))


class VisionTransformerLift(StudentMixin, VisionTransformer):
    """ViT trunk -> lift (Linear + LayerNorm, replaces the final norm) -> average of patch tokens -> head.

    Args:
        lift_dim: width after the lift, normally the teacher's width (384 for CaiT-S24, 768 for ViT-B).
        lift_norm_eps: LayerNorm epsilon of the lift (the authors use PyTorch's default 1e-5).
        global_pool: 'avg' (the paper's GAP over patch tokens) or any non-attention timm pool.
        **kwargs: ``VisionTransformer`` arguments for the trunk (embed_dim, depth, num_heads, patch_size, ...).
    """

    distill_feature_after_norm = True

    def __init__(
            self,
            *,
            lift_dim: int = 384,
            lift_norm_eps: float = 1e-5,
            global_pool: str = "avg",
            num_classes: int = 1000,
            fc_norm: bool | None = None,
            **kwargs,
    ):
        if global_pool in ("map", "prr"):
            raise ValueError(f"Lift classifies from pooled lifted tokens; global_pool={global_pool!r} is not supported")
        if fc_norm:
            raise ValueError("Lift has no fc_norm: the lift's LayerNorm is the final norm")
        super().__init__(global_pool=global_pool, num_classes=num_classes, fc_norm=False, final_norm=True, **kwargs)
        dd = get_device_dtype(self)
        self.lift_dim = lift_dim
        self.norm = LiftProjector(self.embed_dim, lift_dim, eps=lift_norm_eps, **dd)
        self.num_features = self.head_hidden_size = lift_dim
        self.head = nn.Linear(lift_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        if kwargs.get("weight_init") != "skip":
            init_weights_vit_timm(self.norm.proj)
            init_weights_vit_timm(self.head)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        take_indices = super().prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        if prune_norm:  # the lift went with the norm: outputs are trunk-wide again
            self.num_features = self.head_hidden_size = self.embed_dim
        return take_indices


def _convert_authors_lift(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' ``ChannelExpansionWrapper`` layout -> ours.

    ``base_model.*`` is a timm DeiT whose own ``norm``/``head`` never ran (dropped; ``base_model.head`` would
    otherwise collide with the Lift head); ``projections.<last>`` / ``layer_norms.<last>`` are the lift.
    """
    out = {}
    lifts = {m.group(1) for k in state_dict if (m := re.match(r"projections\.(\d+)\.", k))}
    if len(lifts) > 1:
        raise ValueError(f"Checkpoint lifts {len(lifts)} blocks ({sorted(lifts)}); only the paper's last-block "
                         "('step') Lift is supported")
    for k, v in state_dict.items():
        if k.startswith(("base_model.head.", "base_model.norm.")):
            continue
        if k.startswith("base_model."):
            out[k[len("base_model."):]] = v
        elif k.startswith("projections."):
            out["norm.proj." + k.split(".", 2)[2]] = v
        elif k.startswith("layer_norms."):
            out["norm.ln." + k.split(".", 2)[2]] = v
        else:
            out[k] = v
    return out


def checkpoint_filter_fn(state_dict: dict, model: VisionTransformerLift) -> dict[str, torch.Tensor]:
    """Accept the authors' training checkpoint, our own exports, or plain timm ViT/DeiT weights (trunk init)."""
    state_dict = unwrap_state_dict(state_dict)
    if any(k.startswith("base_model.") for k in state_dict):
        state_dict = _convert_authors_lift(state_dict)
        check_state_dict(state_dict, model, "authors' Lift checkpoint")
    elif "norm.proj.weight" in state_dict:
        check_state_dict(state_dict, model, "Lift checkpoint")
    else:
        state_dict = init_from_plain_vit(state_dict, model)
    return state_dict


def _create_lift(variant: str, pretrained: bool = False, **kwargs) -> VisionTransformerLift:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        VisionTransformerLift,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


default_cfgs = generate_default_cfgs({
    "deit_tiny_lift.kd_cait_s24_in1k": student_cfg(
        hf_hub_id=AUTHORS_WEIGHTS,
        hf_hub_filename="models/Lift/pytorch_model.pth",
        description="Authors' release: DeiT-Tiny + Lift distilled from CaiT-S24 (SoftKD + spatial-FFT feature loss, "
                    "300 epochs), ImageNet-1k top-1 77.53.",
        notes=("The Hub page states no license for the weights; the authors' code is Apache-2.0.",),
    ),
    "deit_tiny_lift.fb_in1k_trunk": student_cfg(
        hf_hub_id="timm/deit_tiny_patch16_224.fb_in1k",
        description="Initialisation only: trunk from timm's DeiT-Tiny (fb_in1k); lift and head freshly initialised.",
    ),
    "deit_small_lift.untrained": student_cfg(description="DeiT-Small trunk lifted to 768 for ViT-B/DeiT-B teachers."),
})


@register_model
def deit_tiny_lift(pretrained: bool = False, **kwargs) -> VisionTransformerLift:
    """DeiT-Tiny (192 wide, 12 blocks, 3 heads) lifted to 384 (CaiT-S24 / DeiT-S teachers). 5,983,528 params."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, lift_dim=384)
    return _create_lift("deit_tiny_lift", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def deit_small_lift(pretrained: bool = False, **kwargs) -> VisionTransformerLift:
    """DeiT-Small (384 wide, 12 blocks, 6 heads) lifted to 768 (ViT-B / DeiT-B / DeiT III-B teachers)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, lift_dim=768)
    return _create_lift("deit_small_lift", pretrained=pretrained, **dict(model_args, **kwargs))
