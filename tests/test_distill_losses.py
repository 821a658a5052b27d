"""Each distillation loss against a hand-computed value, and the special cases that reduce to the baselines."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vitkd_zoo.distill import (
    ChannelPool,
    DistillationLoss,
    ProjectorAdapter,
    channel_pool,
    cross_entropy_loss,
    feature_mse_loss,
    hard_kd_loss,
    soft_kd_loss,
    spatial_fft_mse_loss,
)


def test_cross_entropy_label_smoothing_hand_value():
    logits = torch.tensor([[math.log(3.0), 0.0]])  # p = (0.75, 0.25)
    target = torch.tensor([0])
    nll = -math.log(0.75)
    uniform = -(math.log(0.75) + math.log(0.25)) / 2
    assert cross_entropy_loss(logits, target, 0.0).item() == pytest.approx(nll, rel=1e-6)
    assert cross_entropy_loss(logits, target, 0.1).item() == pytest.approx(0.9 * nll + 0.1 * uniform, rel=1e-6)
    # == timm's LabelSmoothingCrossEntropy (the authors' criterion)
    from timm.loss import LabelSmoothingCrossEntropy

    x, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    torch.testing.assert_close(cross_entropy_loss(x, y, 0.1), LabelSmoothingCrossEntropy(0.1)(x, y))
    # soft targets (Mixup): -sum t log p
    soft = torch.tensor([[0.5, 0.5]])
    assert cross_entropy_loss(logits, soft).item() == pytest.approx(0.5 * nll + 0.5 * -math.log(0.25), rel=1e-6)


def test_soft_kd_hand_value_and_temperature():
    s = torch.tensor([[math.log(3.0), 0.0]])  # p_s = (0.75, 0.25)
    t = torch.tensor([[0.0, 0.0]])            # p_t = (0.5, 0.5)
    kl = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert soft_kd_loss(s, t, 1.0).item() == pytest.approx(kl, rel=1e-6)
    # T = 2: p_s = softmax(log3/2, 0) = (sqrt3, 1)/(sqrt3+1), times T^2
    a = math.sqrt(3) / (math.sqrt(3) + 1)
    kl2 = 0.5 * math.log(0.5 / a) + 0.5 * math.log(0.5 / (1 - a))
    assert soft_kd_loss(s, t, 2.0).item() == pytest.approx(4 * kl2, rel=1e-6)
    # batchmean: a batch of two identical rows gives the same value
    assert soft_kd_loss(s.repeat(2, 1), t.repeat(2, 1)).item() == pytest.approx(kl, rel=1e-6)
    # DeiT's reduction is sum / numel = batchmean / num_classes (pinned, ecosystem.md §9)
    x, z = torch.randn(4, 10), torch.randn(4, 10)
    deit = F.kl_div(F.log_softmax(x, -1), F.log_softmax(z, -1), reduction="sum", log_target=True) / x.numel()
    torch.testing.assert_close(soft_kd_loss(x, z) / 10, deit)


def test_hard_kd_is_ce_to_teacher_argmax():
    s = torch.tensor([[math.log(3.0), 0.0]])
    t = torch.tensor([[0.0, 5.0]])  # argmax 1 -> -log 0.25
    assert hard_kd_loss(s, t).item() == pytest.approx(-math.log(0.25), rel=1e-6)


def test_feature_mse_hand_value():
    fs, ft = torch.ones(2, 3, 4, 4), torch.zeros(2, 3, 4, 4)
    assert feature_mse_loss(fs, ft).item() == pytest.approx(1.0)
    fs[0, 0, 0, 0] = 3.0  # one element off by 3 instead of 1: (9 - 1) / 96 more
    assert feature_mse_loss(fs, ft).item() == pytest.approx(1.0 + 8 / 96)


def test_spatial_fft_mse_hand_value():
    # a constant 4x4 map of ones: ortho rfft2 has one non-zero bin (DC = sqrt(16) = 4) out of 4 x 3 bins, real and
    # imaginary stacked -> 24 numbers per channel, one of them 4: MSE = 16 / 24
    fs, ft = torch.ones(1, 2, 4, 4), torch.zeros(1, 2, 4, 4)
    assert spatial_fft_mse_loss(fs, ft).item() == pytest.approx(16 / 24, rel=1e-6)
    # identical maps -> 0; the loss is spatial: a channel permutation applied to both sides changes nothing
    x = torch.randn(2, 8, 7, 7)
    assert spatial_fft_mse_loss(x, x).item() == 0.0
    y = torch.randn(2, 8, 7, 7)
    perm = torch.randperm(8)
    torch.testing.assert_close(spatial_fft_mse_loss(x[:, perm], y[:, perm]), spatial_fft_mse_loss(x, y))


def test_losses_are_fp32_under_bf16():
    x = torch.randn(4, 10, dtype=torch.bfloat16)
    f = torch.randn(4, 8, 7, 7, dtype=torch.bfloat16)
    for value in (cross_entropy_loss(x, torch.zeros(4, dtype=torch.long), 0.1), soft_kd_loss(x, x.flip(0)),
                  feature_mse_loss(f, f.flip(0)), spatial_fft_mse_loss(f, f.flip(0))):
        assert value.dtype == torch.float32


def test_channel_pool_matches_the_authors_pooling():
    t = torch.arange(2 * 4 * 3 * 3, dtype=torch.float32).reshape(2, 4, 3, 3)
    pooled = channel_pool(t, 2)
    torch.testing.assert_close(pooled, torch.stack([(t[:, 0] + t[:, 1]) / 2, (t[:, 2] + t[:, 3]) / 2], 1))
    # == the authors' adaptive_avg_pool3d to (C_s, H, W)
    torch.testing.assert_close(pooled, F.adaptive_avg_pool3d(t, (2, 3, 3)))
    # equal widths (Lift / WideLast): no-op; a wider student is pooled instead of the teacher
    s = torch.randn(2, 4, 3, 3)
    s2, t2 = ChannelPool()(s, t)
    assert s2 is s and t2 is t
    s3, t3 = ChannelPool()(torch.randn(2, 8, 3, 3), t)
    assert s3.shape == t3.shape == (2, 4, 3, 3)


def test_projector_adapter_maps_student_to_teacher_width_and_trains():
    adapter = ProjectorAdapter(4, 8)
    s, t = torch.randn(3, 4, 5, 5, requires_grad=True), torch.randn(3, 8, 5, 5)
    s2, t2 = adapter(s, t)
    assert s2.shape == t2.shape == (3, 8, 5, 5)
    feature_mse_loss(s2, t2).backward()
    assert adapter.proj.weight.grad is not None and adapter.proj.weight.grad.abs().sum() > 0
    assert sum(p.numel() for p in adapter.parameters()) == 4 * 8 + 2 * 8  # Linear (no bias) + BN affine


def test_combined_loss_is_the_weighted_sum_with_a_readable_log():
    torch.manual_seed(0)
    zs, zt, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    fs, ft = torch.randn(6, 16, 7, 7), torch.randn(6, 16, 7, 7)
    loss_fn = DistillationLoss(alpha=0.9, temperature=1.0, beta=1.0, feature_weight=0.2, feature_loss="fft",
                               label_smoothing=0.1)
    total, terms = loss_fn(zs, y, zt, fs, ft)
    ce, kd, feat = cross_entropy_loss(zs, y, 0.1), soft_kd_loss(zs, zt, 1.0), spatial_fft_mse_loss(fs, ft)
    torch.testing.assert_close(total, 0.1 * ce + 0.9 * kd + 0.2 * feat)
    assert set(terms) == {"ce", "kd", "feat"} and not any(v.requires_grad for v in terms.values())
    torch.testing.assert_close(terms["feat"], feat)


def test_special_cases_reduce_to_the_baselines():
    from timm.loss import LabelSmoothingCrossEntropy

    torch.manual_seed(1)
    zs, zt, y = torch.randn(6, 10), torch.randn(6, 10), torch.randint(0, 10, (6,))
    fs, ft = torch.randn(6, 16, 7, 7), torch.randn(6, 16, 7, 7)
    # no teacher -> plain CE with label smoothing (the no-KD baseline), whatever alpha says
    total, terms = DistillationLoss(alpha=0.9, label_smoothing=0.1)(zs, y)
    torch.testing.assert_close(total, LabelSmoothingCrossEntropy(0.1)(zs, y))
    assert set(terms) == {"ce"}
    # alpha 0.9, no feature term -> SoftKD baseline (DeiT-Tiny SoftKD run)
    total, terms = DistillationLoss(alpha=0.9, feature_loss="none", label_smoothing=0.1)(zs, y, zt, fs, ft)
    torch.testing.assert_close(total, 0.1 * cross_entropy_loss(zs, y, 0.1) + 0.9 * soft_kd_loss(zs, zt))
    assert "feat" not in terms
    # alpha 0 (feature-only runs): CE_ls + 0.2 * L_feat, teacher logits unused
    total, _ = DistillationLoss(alpha=0.0, feature_weight=0.2, feature_loss="mse", label_smoothing=0.1)(
        zs, y, zt, fs, ft)
    torch.testing.assert_close(total, cross_entropy_loss(zs, y, 0.1) + 0.2 * feature_mse_loss(fs, ft))
    # w = 0 switches the feature term off
    loss_fn = DistillationLoss(alpha=0.0, feature_weight=0.0, feature_loss="fft", label_smoothing=0.1)
    assert not loss_fn.uses_feature
    torch.testing.assert_close(loss_fn(zs, y, zt, fs, ft)[0], cross_entropy_loss(zs, y, 0.1))
    # alpha 1, hard KD: DeiT's hard distillation without the CE term
    total, _ = DistillationLoss(alpha=1.0, kd_type="hard")(zs, y, zt)
    torch.testing.assert_close(total, hard_kd_loss(zs, zt))


@pytest.mark.parametrize("kwargs, match", [
    (dict(kd_type="dist"), "kd_type"), (dict(feature_loss="l1"), "feature_loss"), (dict(alpha=1.5), "alpha"),
    (dict(temperature=0), "temperature"),
])
def test_invalid_loss_settings_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DistillationLoss(**kwargs)
