"""CaiT's talking-heads attention rewritten exactly onto one fused ``scaled_dot_product_attention`` call.

The paper's teacher, CaiT-S24, dominates a distillation step: its talking-heads attention mixes the heads before and
after the softmax, so timm runs it as explicit matmuls, softmax and two head-mixing linears over ``[B, H, N, N]``
maps (``timm.models.cait.TalkingHeadAttn``), which cannot use fused attention kernels.

Both mixings fold into one fused attention call with ``H`` query heads of width ``H * d``:

* before the softmax, ``logits'_g = sum_h L[g, h] q_h . k_h + b_l[g]``: the same as query
  ``q'_g = concat_h(L[g, h] q_h)`` against keys ``concat_h(k_h)``; ``b_l[g]`` is constant along the keys, and softmax
  ignores it;
* after it, ``out_p = sum_g W[p, g] P_g v_p + b_w[p] sum_m v_p(m)``: ``P_g @ concat_h(v_h)`` yields every ``P_g v_p``
  at once, and the ``W`` mixing is a small einsum.

This does ``H`` times the QK^T and AV arithmetic of plain attention (it pays off only where fused kernels do: GPUs),
and it is exact: it matches timm's layer to float rounding (tested at 1e-5 relative in fp32 on the CPU). Valid for
inference only (no attention dropout), which is how a frozen teacher runs.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FusedTalkingHeadAttn", "use_fused_talking_heads"]


class FusedTalkingHeadAttn(nn.Module):
    """Drop-in, weight-sharing replacement for ``timm.models.cait.TalkingHeadAttn`` in eval mode."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.num_heads = attn.num_heads
        self.scale = attn.scale
        self.qkv, self.proj, self.proj_l, self.proj_w = attn.qkv, attn.proj, attn.proj_l, attn.proj_w
        self.proj_drop = attn.proj_drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        H = self.num_heads
        d = C // H
        q, k, v = self.qkv(x).reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)  # each [B, H, N, d]
        # pre-softmax mixing folded into the queries: [B, G, N, H*d] against all heads' keys [B, 1, N, H*d]
        q_mixed = torch.einsum("gh,bhnd->bgnhd", self.proj_l.weight.to(q.dtype), q * self.scale).reshape(B, H, N, H * d)
        keys = k.transpose(1, 2).reshape(B, 1, N, H * d).expand(B, H, N, H * d)
        values = v.transpose(1, 2).reshape(B, 1, N, H * d).expand(B, H, N, H * d)
        attended = F.scaled_dot_product_attention(q_mixed, keys, values, scale=1.0)  # P_g @ V_all: [B, G, N, H*d]
        # post-softmax mixing: out_p = sum_g W[p, g] (P_g v_p) + b_w[p] * sum over keys of v_p
        out = torch.einsum("pg,bgnpd->bpnd", self.proj_w.weight.to(q.dtype), attended.reshape(B, H, N, H, d))
        out = out + self.proj_w.bias.to(q.dtype).view(1, H, 1, 1) * v.sum(dim=2, keepdim=True)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, N, C)))


def use_fused_talking_heads(model: nn.Module) -> int:
    """Swap every timm ``TalkingHeadAttn`` of ``model`` for ``FusedTalkingHeadAttn`` (weights shared, in place).

    Only for inference: refuses a model in training mode with attention dropout. Returns the number swapped
    (0 for models without talking-heads attention).
    """
    from timm.models.cait import TalkingHeadAttn

    swapped = 0
    for module in model.modules():
        for name, child in module.named_children():
            if isinstance(child, TalkingHeadAttn):
                if child.training and child.attn_drop.p > 0:
                    raise ValueError("the fused talking-heads attention has no attention dropout: use it in eval mode")
                setattr(module, name, FusedTalkingHeadAttn(child))
                swapped += 1
    return swapped
