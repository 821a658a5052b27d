"""What the Lift and WideLast students share: a head at the wide width and the paper's distillation feature.

Both students end wider than their trunk (e.g. 192 -> 384), so timm's ``VisionTransformer`` methods that build the
head from ``embed_dim`` must use ``num_features`` instead, and a distillation loop needs the exact tensor the paper
matches to the teacher, computed in the same forward pass as the logits, without hooks.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import get_device_dtype
from timm.models import checkpoint_seq

from ..paper import AUTHORS_CODE, AUTHORS_WEIGHTS, PAPER_ID, TITLE

__all__ = ["StudentMixin", "student_cfg", "AUTHORS_WEIGHTS"]


def student_cfg(**kwargs) -> dict:
    """Pretrained cfg shared by the student families: the authors' ImageNet eval preprocessing.

    The authors evaluate with Resize(256) + CenterCrop(224), i.e. ``crop_pct`` 0.875 (timm's DeiT cfg says 0.9).
    """
    return {
        "url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
        "crop_pct": 0.875, "interpolation": "bicubic", "fixed_input_size": True,
        "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
        "first_conv": "patch_embed.proj", "classifier": "head", "license": "apache-2.0",
        "paper_ids": PAPER_ID, "paper_name": TITLE, "origin_url": AUTHORS_CODE,
        **kwargs,
    }


class StudentMixin:
    """Mixed into ``VisionTransformer`` subclasses whose final width (``num_features``) differs from ``embed_dim``."""

    #: Lift distills the lifted, normed tokens (``self.norm`` is the lift); WideLast the raw last-block tokens.
    distill_feature_after_norm: bool = False

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        # timm rebuilds the head from ``embed_dim``; the students' head reads ``num_features`` (the wide width).
        super().reset_classifier(num_classes, global_pool)
        if num_classes > 0:
            self.head = nn.Linear(self.num_features, num_classes, **get_device_dtype(self))
            self.head.train(self.training)

    def forward_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Embeddings and blocks: the raw residual stream of the last block (NLC, prefix tokens included)."""
        x = self.patch_embed(x)
        x = self._pos_embed(x)
        x = self.patch_drop(x)
        x = self.norm_pre(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.blocks, x)
        return self.blocks(x)

    def forward_distill(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward pass returning ``(logits, feature)``.

        ``feature`` is what arXiv 2511.15572 matches to the teacher's last-block patch tokens: NCHW
        ``[B, num_features, H/p, W/p]``, patch tokens only (Lift: after the lift + LayerNorm; WideLast: raw block
        output, before the final norm).
        """
        height, width = x.shape[-2:]
        tokens = self.forward_tokens(x)
        normed = self.norm(tokens)
        feature = normed if self.distill_feature_after_norm else tokens
        feature = feature[:, self.num_prefix_tokens:]
        grid_h, grid_w = self.patch_embed.dynamic_feat_size((height, width))
        feature = feature.reshape(feature.shape[0], grid_h, grid_w, -1).permute(0, 3, 1, 2)
        return self.forward_head(normed), feature

    @property
    def distill_feature_info(self) -> dict:
        """Channels and stride of the ``forward_distill`` feature (to check a teacher before training)."""
        return dict(num_chs=self.num_features, reduction=self.feature_info[-1]["reduction"],
                    after_norm=self.distill_feature_after_norm)
