"""WideLast students: a ViT whose last block alone runs at the teacher's width.

From "From Per-Image Low-Rank to Encoding Mismatch: Rethinking Feature Distillation in Vision Transformers"
(Tian, Xu, Li; ICML 2026) - https://arxiv.org/abs/2511.15572

Instead of projecting after the fact (Lift), WideLast widens the last block natively: a bias-free
``Linear(D -> D_t)`` + ``LayerNorm`` replaces the residual stream on all tokens (no skip around it), then a standard
pre-norm block at ``D_t`` (head dim kept). Its raw output is distilled against the teacher's last-block tokens and,
after the final norm, its CLS token is classified. DeiT-Tiny <- CaiT-S24 on ImageNet-1k: 74.86 -> 78.23.

Weights: the authors' checkpoint ``Huiyuancs/Encoding_Mismatch`` (``models/WideLast/pytorch_model.pth``) uses the
same key names as this class and loads unchanged.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn
from timm.layers import DropPath, LayerNorm, get_act_layer, get_device_dtype, get_norm_layer
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.vision_transformer import Attention, Block, Mlp, VisionTransformer, init_weights_vit_timm

from ._checkpoint import check_state_dict, init_from_plain_vit, unwrap_state_dict
from ._student import AUTHORS_WEIGHTS, StudentMixin, student_cfg

__all__ = ["VisionTransformerWideLast", "WideBlock"]


class WideBlock(Block):
    """A timm ``Block`` at the wide width, entered through ``proj_in`` (no bias) + ``proj_norm`` on every token."""

    def __init__(self, in_dim: int, dim: int, num_heads: int, **block_kwargs):
        super().__init__(dim=dim, num_heads=num_heads, **block_kwargs)
        dd = dict(device=block_kwargs.get("device"), dtype=block_kwargs.get("dtype"))
        norm_layer = block_kwargs.get("norm_layer", LayerNorm)
        self.proj_in = nn.Linear(in_dim, dim, bias=False, **dd)
        self.proj_norm = norm_layer(dim, **dd)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False):
        return super().forward(self.proj_norm(self.proj_in(x)), attn_mask=attn_mask, is_causal=is_causal)


class VisionTransformerWideLast(StudentMixin, VisionTransformer):
    """ViT whose blocks 0..depth-2 run at ``embed_dim`` and whose last block runs at ``wide_dim``.

    Args:
        wide_dim: width of the last block, final norm and head (the teacher's width: 384 for CaiT-S24).
        wide_heads: heads of the last block (6 keeps DeiT-Tiny's head dim of 64 at 384).
        wide_mlp_ratio: MLP ratio of the last block (default: the trunk's ``mlp_ratio``).
        **kwargs: ``VisionTransformer`` arguments for the trunk.
    """

    distill_feature_after_norm = False

    def __init__(
            self,
            *,
            wide_dim: int = 384,
            wide_heads: int = 6,
            wide_mlp_ratio: float | None = None,
            num_classes: int = 1000,
            **kwargs,
    ):
        super().__init__(num_classes=num_classes, **kwargs)
        dd = get_device_dtype(self)
        self.wide_dim = wide_dim
        norm_layer = get_norm_layer(kwargs.get("norm_layer")) or LayerNorm
        last = self.blocks[-1]
        self.blocks[-1] = WideBlock(
            self.embed_dim, wide_dim, wide_heads,
            mlp_ratio=kwargs.get("mlp_ratio", 4.0) if wide_mlp_ratio is None else wide_mlp_ratio,
            qkv_bias=kwargs.get("qkv_bias", True),
            qk_norm=kwargs.get("qk_norm", False),
            proj_bias=kwargs.get("proj_bias", True),
            init_values=kwargs.get("init_values"),
            proj_drop=kwargs.get("proj_drop_rate", 0.0),
            attn_drop=kwargs.get("attn_drop_rate", 0.0),
            drop_path=last.drop_path1.drop_prob if isinstance(last.drop_path1, DropPath) else 0.0,
            norm_layer=norm_layer,
            act_layer=get_act_layer(kwargs.get("act_layer")) or nn.GELU,
            mlp_layer=kwargs.get("mlp_layer", Mlp),
            attn_layer=kwargs.get("attn_layer", Attention),
            depth=len(self.blocks) - 1,
            **dd,
        )
        # timm builds the final norm, head and last feature_info at embed_dim; here they follow the wide block.
        if not isinstance(self.norm, nn.Identity):
            self.norm = norm_layer(wide_dim, **dd)
        if not isinstance(self.fc_norm, nn.Identity):
            self.fc_norm = norm_layer(wide_dim, **dd)
        self.num_features = self.head_hidden_size = wide_dim
        self.head = nn.Linear(wide_dim, num_classes, **dd) if num_classes > 0 else nn.Identity()
        self.feature_info[-1] = dict(self.feature_info[-1], num_chs=wide_dim)
        if kwargs.get("weight_init") != "skip":
            for module in (self.blocks[-1], self.head):
                module.apply(init_weights_vit_timm)

    def forward_intermediates(
            self,
            x: torch.Tensor,
            indices: int | list[int] | None = None,
            return_prefix_tokens: bool = False,
            norm: bool = False,
            stop_early: bool = False,
            output_fmt: str = "NCHW",
            intermediates_only: bool = False,
            output_dict: bool = False,
            **kwargs,
    ) -> Any:
        """timm's ``forward_intermediates``; with ``norm=True`` the final (wide) norm is applied to the
        intermediates of the wide block only: narrower blocks have no norm of their width and stay raw."""
        if not norm:
            return super().forward_intermediates(
                x, indices, return_prefix_tokens, False, stop_early, output_fmt, intermediates_only, output_dict,
                **kwargs)
        out = super().forward_intermediates(
            x, indices, True, False, stop_early, "NLC", intermediates_only, True, **kwargs)
        B, _, height, width = x.shape
        spatial = [self.norm(y) if y.shape[-1] == self.num_features else y for y in out["image_intermediates"]]
        prefix = out.get("image_intermediates_prefix")
        if prefix is not None:
            prefix = [self.norm(y) if y.shape[-1] == self.num_features else y for y in prefix]
        if output_fmt == "NCHW":
            H, W = self.patch_embed.dynamic_feat_size((height, width))
            spatial = [y.reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous() for y in spatial]
        if output_dict:
            out["image_intermediates"] = spatial
            if prefix is not None and return_prefix_tokens:
                out["image_intermediates_prefix"] = prefix
            else:
                out.pop("image_intermediates_prefix", None)
            return out
        intermediates = list(zip(spatial, prefix, strict=True)) if return_prefix_tokens and prefix is not None else spatial
        return intermediates if intermediates_only else (out["image_features"], intermediates)

    def prune_intermediate_layers(self, indices=1, prune_norm: bool = False, prune_head: bool = True):
        take_indices = super().prune_intermediate_layers(indices, prune_norm=prune_norm, prune_head=prune_head)
        if not isinstance(self.blocks[-1], WideBlock):  # the wide block was pruned: outputs are trunk-wide
            self.norm = nn.Identity()
            self.num_features = self.head_hidden_size = self.embed_dim
        return take_indices


def checkpoint_filter_fn(state_dict: dict, model: VisionTransformerWideLast) -> dict[str, torch.Tensor]:
    """The authors' checkpoint and our exports share our key names; plain ViT/DeiT weights initialise the trunk."""
    state_dict = unwrap_state_dict(state_dict)
    if f"blocks.{len(model.blocks) - 1}.proj_in.weight" in state_dict:
        check_state_dict(state_dict, model, "WideLast checkpoint")
        return state_dict
    if any(k.endswith(".proj_in.weight") for k in state_dict):
        depth = max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks.")) + 1
        raise ValueError(f"This WideLast checkpoint has {depth} blocks but the model has {len(model.blocks)}; "
                         f"pass depth={depth}")
    return init_from_plain_vit(state_dict, model)


def _create_widelast(variant: str, pretrained: bool = False, **kwargs) -> VisionTransformerWideLast:
    out_indices = kwargs.pop("out_indices", 3)
    return build_model_with_cfg(
        VisionTransformerWideLast,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(out_indices=out_indices, feature_cls="getter"),
        **kwargs,
    )


default_cfgs = generate_default_cfgs({
    "deit_tiny_widelast.kd_cait_s24_in1k": student_cfg(
        hf_hub_id=AUTHORS_WEIGHTS,
        hf_hub_filename="models/WideLast/pytorch_model.pth",
        description="Authors' release: DeiT-Tiny + WideLast distilled from CaiT-S24 (SoftKD + MSE feature loss, "
                    "300 epochs), ImageNet-1k top-1 78.23.",
        notes=("The Hub page states no license for the weights; the authors' code is Apache-2.0.",),
    ),
    "deit_tiny_widelast.fb_in1k_trunk": student_cfg(
        hf_hub_id="timm/deit_tiny_patch16_224.fb_in1k",
        description="Initialisation only: blocks 0-10 from timm's DeiT-Tiny (fb_in1k); wide block, norm and head "
                    "freshly initialised.",
    ),
    "deit_small_widelast.untrained": student_cfg(description="DeiT-Small with a 768-wide last block for ViT-B teachers."),
})


@register_model
def deit_tiny_widelast(pretrained: bool = False, **kwargs) -> VisionTransformerWideLast:
    """DeiT-Tiny with block 11 at 384 wide / 6 heads (CaiT-S24 / DeiT-S teachers). 7,313,896 params."""
    model_args = dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, wide_dim=384, wide_heads=6)
    return _create_widelast("deit_tiny_widelast", pretrained=pretrained, **dict(model_args, **kwargs))


@register_model
def deit_small_widelast(pretrained: bool = False, **kwargs) -> VisionTransformerWideLast:
    """DeiT-Small with block 11 at 768 wide / 12 heads (ViT-B / DeiT-B teachers)."""
    model_args = dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, wide_dim=768, wide_heads=12)
    return _create_widelast("deit_small_widelast", pretrained=pretrained, **dict(model_args, **kwargs))
