"""Distillation losses of arXiv 2511.15572 and its baselines, each a small function computed in fp32.

The combined objective is the authors' (``training/widelast/losses.py``)::

    L = (1 - alpha) * CE_ls(z_s, y) + alpha * KD(z_s, z_t) + beta * w * L_feat(F_s, F_t)

* ``CE_ls``: cross-entropy with label smoothing (timm ``LabelSmoothingCrossEntropy``; soft targets with Mixup).
* ``KD``: soft (``KL(softmax(z_t/T) || softmax(z_s/T))``, ``batchmean``, times ``T^2``) or hard (CE to the
  teacher's argmax).
* ``L_feat``: ``mse`` (plain MSE of the two token maps) or ``fft`` (the "SpectralKD" spatial-FFT MSE: ``rfft2`` over
  the token grid per channel, ``norm="ortho"``, real and imaginary parts stacked, MSE).

Feature adapters for students whose distilled width differs from the teacher's (the paper's baselines):
``ChannelPool`` (parameter-free channel average pooling of the wider map, "standard feature KD") and
``ProjectorAdapter`` (a training-only ``Linear + BatchNorm`` projector, "ProjectorKD"). Lift and WideLast need
neither: their distilled feature already has the teacher's width.

Everything is computed in fp32 even under bf16/fp16 autocast: fp16 log-softmax and FFT energies under/overflow.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "FEATURE_LOSSES", "KD_TYPES", "cross_entropy_loss", "soft_kd_loss", "hard_kd_loss", "feature_mse_loss",
    "spatial_fft_mse_loss", "channel_pool", "ChannelPool", "ProjectorAdapter", "DistillationLoss",
]

FEATURE_LOSSES = ("none", "mse", "fft")
KD_TYPES = ("soft", "hard")


def cross_entropy_loss(logits: torch.Tensor, target: torch.Tensor, smoothing: float = 0.0) -> torch.Tensor:
    """CE with label smoothing, fp32. ``target`` is class indices ``[B]`` or soft targets ``[B, K]`` (Mixup).

    Equals timm's ``LabelSmoothingCrossEntropy(smoothing)``:
    ``(1 - s) * nll(y) + s * mean_k(-log p_k)``; with soft targets, ``sum_k -t_k log p_k`` (smoothing already in t).
    """
    logprobs = F.log_softmax(logits.float(), dim=-1)
    if target.ndim == 2:
        return torch.sum(-target.float() * logprobs, dim=-1).mean()
    nll = -logprobs.gather(dim=-1, index=target.unsqueeze(1)).squeeze(1)
    if smoothing == 0.0:
        return nll.mean()
    return ((1.0 - smoothing) * nll - smoothing * logprobs.mean(dim=-1)).mean()


def soft_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``KL(p_t || p_s)`` at temperature T, ``batchmean`` (sum over classes, mean over the batch), times ``T^2``.

    The authors' ``F.kl_div(log_softmax(z_s/T), log_softmax(z_t/T), reduction='batchmean', log_target=True) * T*T``.
    (DeiT divides by ``numel`` instead, i.e. 1/num_classes of this.)
    """
    t = temperature
    log_p_s = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


def hard_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """CE of the student against the teacher's argmax (DeiT's "hard distillation", no smoothing)."""
    return F.cross_entropy(student_logits.float(), teacher_logits.argmax(dim=-1))


def feature_mse_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """``F.mse_loss`` over all elements of the two NCHW token maps, no normalisation of either side, fp32."""
    return F.mse_loss(student_feature.float(), teacher_feature.float())


def spatial_fft_mse_loss(student_feature: torch.Tensor, teacher_feature: torch.Tensor) -> torch.Tensor:
    """SpectralKD: MSE between the ortho ``rfft2`` (over H, W of each channel) of the two maps, real and imaginary
    parts stacked. Spatial frequency, not channel frequency."""
    fs = torch.fft.rfft2(student_feature.float(), norm="ortho")
    ft = torch.fft.rfft2(teacher_feature.float(), norm="ortho")
    return F.mse_loss(torch.stack((fs.real, fs.imag), dim=-1), torch.stack((ft.real, ft.imag), dim=-1))


def channel_pool(feature: torch.Tensor, channels: int) -> torch.Tensor:
    """Average-pool an NCHW map along channels to ``channels`` (the authors' ``adaptive_avg_pool3d`` to
    ``(C, H, W)``: 384 -> 192 is the mean of adjacent channel pairs). No-op when the width already matches."""
    if feature.shape[1] == channels:
        return feature
    _, _, h, w = feature.shape
    return F.adaptive_avg_pool3d(feature.unsqueeze(1), (channels, h, w)).squeeze(1)


class ChannelPool(nn.Module):
    """Parameter-free width alignment: the wider of the two maps is channel-average-pooled to the narrower width
    (teacher 384 -> student 192 for plain DeiT-Tiny). The paper's "standard feature KD" baseline."""

    def forward(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor):
        cs, ct = student_feature.shape[1], teacher_feature.shape[1]
        if cs < ct:
            teacher_feature = channel_pool(teacher_feature, cs)
        elif cs > ct:
            student_feature = channel_pool(student_feature, ct)
        return student_feature, teacher_feature


class ProjectorAdapter(nn.Module):
    """Training-only projector ("ProjectorKD", FitNet style): student map -> 1x1 ``Linear(C_s -> C_t)`` ->
    ``BatchNorm2d(C_t)``; the teacher map goes through a parameter-free ``BatchNorm2d(C_t, affine=False)`` so both
    sides are compared on the same scale. It is optimised with the student and discarded after training."""

    def __init__(self, student_channels: int, teacher_channels: int, teacher_norm: bool = True):
        super().__init__()
        self.proj = nn.Conv2d(student_channels, teacher_channels, kernel_size=1, bias=False)
        self.norm = nn.BatchNorm2d(teacher_channels)
        self.teacher_norm = nn.BatchNorm2d(teacher_channels, affine=False) if teacher_norm else nn.Identity()

    def forward(self, student_feature: torch.Tensor, teacher_feature: torch.Tensor):
        student_feature = self.norm(self.proj(student_feature))
        return student_feature, self.teacher_norm(teacher_feature.to(student_feature.dtype))


class DistillationLoss(nn.Module):
    """``(1 - alpha) * CE_ls + alpha * KD + beta * w * feature`` with a per-term log.

    Args:
        alpha: weight of the logit-KD term (0.9 for the paper's "SoftKD + feature" runs, 0 for feature-only runs;
            forced to 0 when there is no teacher).
        kd_type: 'soft' (KL at ``temperature``) or 'hard' (CE to the teacher's argmax).
        temperature: T of the soft KD (the paper: 1.0).
        beta, feature_weight: the feature term's weight is ``beta * feature_weight`` (the paper: 1.0 * 0.2).
        feature_loss: 'none', 'mse' or 'fft'.
        label_smoothing: of the CE term (the paper: 0.1).

    ``forward`` returns ``(total, terms)``; ``terms`` holds detached fp32 tensors ``ce``, ``kd``, ``feat`` (each
    unweighted; absent when not computed) so logging never forces a device sync.
    """

    def __init__(
            self,
            alpha: float = 0.0,
            kd_type: str = "soft",
            temperature: float = 1.0,
            beta: float = 1.0,
            feature_weight: float = 0.0,
            feature_loss: str = "none",
            label_smoothing: float = 0.0,
    ):
        super().__init__()
        if kd_type not in KD_TYPES:
            raise ValueError(f"kd_type must be one of {KD_TYPES}, got {kd_type!r}")
        if feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"feature_loss must be one of {FEATURE_LOSSES}, got {feature_loss!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.alpha, self.kd_type, self.temperature = float(alpha), kd_type, float(temperature)
        self.beta, self.feature_weight, self.feature_loss = float(beta), float(feature_weight), feature_loss
        self.label_smoothing = float(label_smoothing)

    @property
    def uses_feature(self) -> bool:
        return self.feature_loss != "none" and self.beta * self.feature_weight != 0.0

    def forward(
            self,
            student_logits: torch.Tensor,
            target: torch.Tensor,
            teacher_logits: torch.Tensor | None = None,
            student_feature: torch.Tensor | None = None,
            teacher_feature: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = {}
        ce = cross_entropy_loss(student_logits, target, self.label_smoothing)
        terms["ce"] = ce.detach()
        alpha = self.alpha if teacher_logits is not None else 0.0
        total = (1.0 - alpha) * ce if alpha != 1.0 else ce * 0.0
        if alpha > 0.0:
            if self.kd_type == "soft":
                kd = soft_kd_loss(student_logits, teacher_logits, self.temperature)
            else:
                kd = hard_kd_loss(student_logits, teacher_logits)
            terms["kd"] = kd.detach()
            total = total + alpha * kd
        if self.uses_feature and student_feature is not None and teacher_feature is not None:
            if self.feature_loss == "mse":
                feat = feature_mse_loss(student_feature, teacher_feature)
            else:
                feat = spatial_fft_mse_loss(student_feature, teacher_feature)
            terms["feat"] = feat.detach()
            total = total + (self.beta * self.feature_weight) * feat
        return total, terms

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, kd_type={self.kd_type}, T={self.temperature}, beta={self.beta}, "
                f"w={self.feature_weight}, feature_loss={self.feature_loss}, label_smoothing={self.label_smoothing}")
