"""vitkd_zoo.analysis: the paper's SVD / PCA / SEP definitions against independent numpy implementations,
constructed inputs with known answers, streaming == all-at-once, feature taps == forward hooks, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torch.nn as nn
from PIL import Image

import vitkd_zoo  # noqa: F401  (registers the students)
from vitkd_zoo.analysis import (
    AnalysisError,
    EmptyDataError,
    LayerIndexError,
    NoTokensError,
    SecondMoment,
    SEPAccumulator,
    analyze_model,
    analyze_tokens,
    build_dataset,
    dataset_pca_ranks,
    extract_tokens,
    layerwise_summary,
    make_loader,
    numerical_rank,
    pca_ranks,
    resolve_layers,
    select_fashion_mnist,
    select_image_files,
    sep_bandwidth,
    sep_curve,
    sep_dims,
    singular_values,
    summarize,
    summarize_ranks,
    svd_energy_ranks,
)

THR = (0.8, 0.9, 0.95, 0.99)
SEP_THR = (0.5, 0.6, 0.7, 0.8, 0.9)


# --------------------------------------------------------------------------------------------------------------
# Independent numpy implementations of the definitions (per image / per token loops, as the authors wrote them)
# --------------------------------------------------------------------------------------------------------------

def np_first_reaching(curve, tau):
    hit = np.flatnonzero(curve >= tau)
    return int(hit[0]) + 1 if hit.size else len(curve)


def np_svd_ranks(x, thresholds):
    out = []
    for img in np.asarray(x, dtype=np.float64):
        s = np.linalg.svd(img, compute_uv=False)
        c = np.cumsum(s ** 2) / np.sum(s ** 2)
        out.append([min(int(np.searchsorted(c, t)) + 1, len(c)) for t in thresholds])
    return np.array(out)


def np_pca_ranks(x, thresholds, center=False):
    x = np.asarray(x, dtype=np.float64)
    flat = x.reshape(-1, x.shape[-1])
    moment = flat.T @ flat / flat.shape[0]
    mu = flat.mean(0)
    if center:
        moment = moment - np.outer(mu, mu)
    w, v = np.linalg.eigh(moment)
    v = v[:, np.argsort(w)[::-1]]
    out = []
    for img in x:
        if center:
            img = img - mu
        e = ((img @ v) ** 2).sum(0)
        curve = np.cumsum(e) / np.sum(img ** 2)
        out.append([np_first_reaching(curve, t) for t in thresholds])
    return np.array(out)


def np_sep_curve(x, mode):
    x = np.asarray(x, dtype=np.float64)
    tokens = x.reshape(-1, x.shape[-1])
    d = tokens.shape[-1]
    curves = []
    for tok in tokens:
        if mode == "full":
            e = np.abs(np.fft.fft(tok)) ** 2
        else:
            e = np.abs(np.fft.rfft(tok)) ** 2
            if d % 2 == 0:
                e[1:-1] *= 2
            else:
                e[1:] *= 2
        curves.append(np.cumsum(e) / e.sum())
    curves = np.array(curves)
    return curves.mean(0), curves.std(0)


def low_rank_tokens(n, t, c, rank, seed=0, noise=0.05):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, t, rank, generator=g) @ torch.randn(n, rank, c, generator=g)
    return a + noise * torch.randn(n, t, c, generator=g)


# --------------------------------------------------------------------------------------------------------------
# Per-image SVD
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(12, 49, 64), (9, 40, 24)])  # T < C and T > C
def test_svd_ranks_match_numpy(shape):
    x = low_rank_tokens(*shape, rank=6)
    got = svd_energy_ranks(x, THR)
    assert got.dtype == torch.int64 and got.shape == (shape[0], len(THR))
    np.testing.assert_array_equal(got.numpy(), np_svd_ranks(x.numpy(), THR))


def test_svd_ranks_constructed_spectrum():
    # sigma^2 shares 0.55, 0.30, 0.11, 0.035, 0.005 -> cumulative 0.55, 0.85, 0.96, 0.995, 1.0
    t, c = 20, 12
    u, _ = torch.linalg.qr(torch.randn(t, 5, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(c, 5, dtype=torch.float64))
    s = torch.tensor([0.55, 0.30, 0.11, 0.035, 0.005], dtype=torch.float64).sqrt() * 7.0
    x = (u * s) @ v.T
    assert svd_energy_ranks(x[None], THR).tolist() == [[2, 3, 3, 4]]
    assert numerical_rank(x[None]).tolist() == [5]


def test_svd_known_rank_equal_energy():
    # rank 8 with equal singular values: c_k = k / 8 -> smallest k with k/8 >= tau
    q1, _ = torch.linalg.qr(torch.randn(30, 8, dtype=torch.float64))
    q2, _ = torch.linalg.qr(torch.randn(16, 8, dtype=torch.float64))
    x = torch.stack([q1 @ q2.T, 3.0 * q1 @ q2.T])
    assert svd_energy_ranks(x, THR).tolist() == [[7, 8, 8, 8]] * 2
    assert numerical_rank(x).tolist() == [8, 8]
    assert svd_energy_ranks(x.float(), (0.45,)).tolist() == [[4], [4]]


@pytest.mark.parametrize("noise", [0.0, 0.05])  # exactly rank-deficient (the svdvals fallback) and full rank
def test_numerical_rank_and_singular_values_match_numpy(noise):
    g = torch.Generator().manual_seed(8)
    x = torch.randn(6, 30, 4, generator=g, dtype=torch.float64) @ torch.randn(6, 4, 20, generator=g, dtype=torch.float64)
    x = x + noise * torch.randn(6, 30, 20, generator=g, dtype=torch.float64)
    s_np = np.stack([np.linalg.svd(img, compute_uv=False) for img in x.numpy()])
    np.testing.assert_allclose(singular_values(x).numpy(), s_np, rtol=1e-10, atol=1e-12)
    assert numerical_rank(x).tolist() == (s_np > 1e-10).sum(1).tolist()
    assert numerical_rank(x).tolist() == ([4] * 6 if noise == 0 else [20] * 6)
    assert numerical_rank(x, tol=1e3).tolist() == (s_np > 1e3).sum(1).tolist()


def test_svd_ranks_are_uncentered():
    # tokens = a constant vector + tiny noise: uncentered energy is one direction (rank 1 at 99 %)
    x = torch.ones(3, 50, 16) * torch.linspace(1, 2, 16) + 1e-3 * torch.randn(3, 50, 16)
    assert svd_energy_ranks(x, (0.99,)).flatten().tolist() == [1, 1, 1]


# --------------------------------------------------------------------------------------------------------------
# Dataset PCA
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("center", [False, True])
def test_pca_ranks_match_numpy(center):
    x = low_rank_tokens(10, 30, 24, rank=5, seed=1) + 0.5
    got = dataset_pca_ranks(x, THR, center=center)
    np.testing.assert_array_equal(got.numpy(), np_pca_ranks(x.numpy(), THR, center))


def test_pca_constructed_shared_basis_vs_per_image():
    # image 0 lives in (e0, e1) with energies 4, 3; image 1 in (e2, e3) with energies 2, 1.
    # Global eigen-order e0 > e1 > e2 > e3, so image 1 needs d = 3 / 4 of the shared basis but only 1 / 2 of its own.
    x = torch.zeros(2, 2, 6, dtype=torch.float64)
    x[0, 0, 0], x[0, 1, 1], x[1, 0, 2], x[1, 1, 3] = 2.0, 3 ** 0.5, 2 ** 0.5, 1.0
    assert dataset_pca_ranks(x, (0.5, 0.9)).tolist() == [[1, 2], [3, 4]]
    assert svd_energy_ranks(x, (0.5, 0.9)).tolist() == [[1, 2], [1, 2]]


def test_second_moment_streaming_equals_all_at_once():
    x = low_rank_tokens(13, 20, 16, rank=4, seed=2) + 0.2
    acc = SecondMoment()
    for part in torch.split(x, [1, 5, 7]):
        acc.update(part)
    whole = SecondMoment().update(x.reshape(-1, 16))
    assert acc.count == 13 * 20
    torch.testing.assert_close(acc.matrix(), whole.matrix())
    torch.testing.assert_close(acc.matrix(center=True), whole.matrix(center=True))
    flat = x.reshape(-1, 16).double()
    torch.testing.assert_close(acc.matrix(), flat.T @ flat / flat.shape[0])
    _, basis = acc.basis()
    streamed = torch.cat([pca_ranks(part, basis, THR) for part in torch.split(x, 4)])
    assert torch.equal(streamed, dataset_pca_ranks(x, THR))


# --------------------------------------------------------------------------------------------------------------
# SEP
# --------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [32, 33])
@pytest.mark.parametrize("mode", ["full", "folded"])
def test_sep_curve_matches_numpy(mode, channels):
    x = low_rank_tokens(4, 10, channels, rank=3, seed=3)
    mean, std = np_sep_curve(x.numpy(), mode)
    acc = SEPAccumulator(mode).update(x)
    np.testing.assert_allclose(sep_curve(x, mode).numpy(), mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(acc.std().numpy(), std, rtol=0, atol=1e-9)
    assert sep_curve(x, mode).shape == ((channels,) if mode == "full" else (channels // 2 + 1,))
    assert abs(float(sep_curve(x, mode)[-1]) - 1.0) < 1e-12
    ref_dims = [np_first_reaching(mean, t) for t in SEP_THR]
    assert sep_dims(sep_curve(x, mode), SEP_THR).tolist() == ref_dims
    np.testing.assert_allclose(sep_bandwidth(sep_curve(x, mode), SEP_THR).numpy(), np.array(ref_dims) / len(mean))


def test_sep_white_noise_bandwidth_is_threshold():
    x = torch.randn(40, 64, 256, generator=torch.Generator().manual_seed(4))
    for mode in ("full", "folded"):
        b = sep_bandwidth(sep_curve(x, mode), SEP_THR)
        np.testing.assert_allclose(b.numpy(), SEP_THR, atol=0.02)


def test_sep_single_frequency_token():
    c, f = 64, 5
    token = torch.cos(2 * torch.pi * f * torch.arange(c, dtype=torch.float64) / c)
    x = token.expand(2, 3, c)
    # full FFT: half the energy at bin f, half at bin C - f
    full = sep_curve(x, "full")
    assert sep_dims(full, (0.25, 0.5, 0.6, 1.0)).tolist() == [f + 1, f + 1, c - f + 1, c - f + 1]
    # folded: all energy at bin f
    folded = sep_curve(x, "folded")
    assert folded.shape == (c // 2 + 1,)
    assert sep_dims(folded, SEP_THR).tolist() == [f + 1] * len(SEP_THR)
    np.testing.assert_allclose(sep_bandwidth(folded, (0.9,)).numpy(), [(f + 1) / (c // 2 + 1)])


def test_sep_streaming_equals_all_at_once():
    x = low_rank_tokens(7, 11, 40, rank=4, seed=5)
    acc = SEPAccumulator("full", chunk_tokens=5)
    for part in torch.split(x, [2, 1, 4]):
        acc.update(part)
    torch.testing.assert_close(acc.mean(), sep_curve(x, "full"), rtol=0, atol=1e-13)


# --------------------------------------------------------------------------------------------------------------
# Summaries and input checks
# --------------------------------------------------------------------------------------------------------------

def test_summaries_match_numpy():
    values = torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5, 8])
    s = summarize(values, percentiles=(25, 99))
    v = values.numpy()
    assert s["p99"] == pytest.approx(np.percentile(v, 99))
    assert s["p25"] == pytest.approx(np.percentile(v, 25))
    assert s["mean"] == pytest.approx(v.mean()) and s["median"] == pytest.approx(np.median(v))
    assert s["std"] == pytest.approx(np.std(v))  # ddof 0, as the authors' np.std
    ranks = torch.stack([values, values * 2], 1)
    table = summarize_ranks(ranks, (0.9, 0.99))
    assert set(table) == {"0.9", "0.99"} and table["0.99"]["p99"] == pytest.approx(np.percentile(v * 2, 99))
    lw = layerwise_summary({0: values, 3: values + 1})
    assert lw[3]["p75"] == pytest.approx(np.percentile(v + 1, 75))


def test_metric_input_errors():
    x = torch.randn(2, 5, 8)
    with pytest.raises(ValueError, match="fractions"):
        svd_energy_ranks(x, (99,))
    with pytest.raises(ValueError, match="empty"):
        svd_energy_ranks(torch.zeros(0, 5, 8), THR)
    with pytest.raises(ValueError, match=r"\[N_images, T, C\]"):
        dataset_pca_ranks(torch.randn(5, 8), THR)
    with pytest.raises(ValueError, match="zero energy"):
        svd_energy_ranks(torch.zeros(1, 5, 8), THR)
    with pytest.raises(ValueError, match="zero energy"):
        sep_curve(torch.zeros(1, 5, 8))
    with pytest.raises(ValueError, match="mode"):
        sep_curve(x, "half")


# --------------------------------------------------------------------------------------------------------------
# Feature extraction
# --------------------------------------------------------------------------------------------------------------

def tiny_vit():
    torch.manual_seed(0)
    return timm.create_model("vit_tiny_patch16_224", img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=2,
                             num_heads=2, num_classes=10).eval()


def hooked_blocks(model, blocks, x):
    outs = []
    handles = [b.register_forward_hook(lambda m, i, o: outs.append(o.detach())) for b in blocks]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return outs


def test_vit_tokens_equal_raw_block_outputs_without_cls():
    model = tiny_vit()
    x = torch.randn(5, 1, 28, 28)
    got = extract_tokens(model, x, "all", batch_size=2)
    hooks = hooked_blocks(model, model.blocks, x)
    assert sorted(got) == [0, 1]
    for layer in (0, 1):
        assert got[layer].shape == (5, 49, 32)
        torch.testing.assert_close(got[layer], hooks[layer][:, 1:])  # CLS dropped, before the final norm


def test_cait_tokens_are_self_attention_block_outputs():
    torch.manual_seed(0)
    model = timm.create_model("cait_xxs24_224", img_size=32, patch_size=8, depth=2, num_classes=10).eval()
    x = torch.randn(3, 3, 32, 32)
    got = extract_tokens(model, x, "all")
    hooks = hooked_blocks(model, model.blocks, x)  # the SA blocks only; blocks_token_only are not taps
    assert sorted(got) == [0, 1]
    for layer in (0, 1):
        assert got[layer].shape == (3, 16, 192)
        torch.testing.assert_close(got[layer], hooks[layer])


def test_students_raw_tokens_and_lift_norm():
    torch.manual_seed(0)
    lift = timm.create_model("deit_tiny_lift", img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=2,
                             num_heads=2, lift_dim=64, num_classes=10).eval()
    wide = timm.create_model("deit_tiny_widelast", img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=2,
                             num_heads=2, wide_dim=64, wide_heads=2, num_classes=10).eval()
    x = torch.randn(2, 1, 28, 28)
    raw = extract_tokens(lift, x, "last")[1]
    assert raw.shape == (2, 16, 32)  # the trunk's raw output; the lift sits in the final-norm slot
    lifted = extract_tokens(lift, x, "last", norm=True)[1]
    assert lifted.shape == (2, 16, 64)
    torch.testing.assert_close(lifted, lift.norm(raw))
    _, feature = lift.forward_distill(x)  # the tensor the paper distills: the lifted tokens
    torch.testing.assert_close(lifted, feature.flatten(2).transpose(1, 2))
    wide_tokens = extract_tokens(wide, x, "all")
    assert wide_tokens[0].shape == (2, 16, 32) and wide_tokens[1].shape == (2, 16, 64)
    _, feature = wide.forward_distill(x)
    torch.testing.assert_close(wide_tokens[1], feature.flatten(2).transpose(1, 2))


def test_swin_stage_tokens():
    torch.manual_seed(0)
    model = timm.create_model("swin_tiny_patch4_window7_224", img_size=56, embed_dim=16, depths=(1, 1),
                              num_heads=(1, 1), window_size=7, num_classes=10).eval()
    x = torch.randn(2, 3, 56, 56)
    got = extract_tokens(model, x, "all")
    hooks = hooked_blocks(model, model.layers, x)  # stage outputs, NHWC
    for layer in (0, 1):
        torch.testing.assert_close(got[layer], hooks[layer].flatten(1, 2))
    assert got[0].shape == (2, 196, 16) and got[1].shape == (2, 49, 32)


def test_resolve_layers():
    assert resolve_layers("last", 12) == [11]
    assert resolve_layers("all", 3) == [0, 1, 2]
    assert resolve_layers("0, -1, 5", 12) == [0, 5, 11]
    assert resolve_layers([2, -3], 4) == [1, 2]
    with pytest.raises(LayerIndexError, match=r"12 out of range: the model has 12 blocks \(valid: 0..11"):
        resolve_layers("0,12", 12)
    with pytest.raises(LayerIndexError, match="'last', 'all'"):
        resolve_layers("final", 12)


def test_extraction_errors():
    model = tiny_vit()
    with pytest.raises(LayerIndexError, match="out of range"):
        extract_tokens(model, torch.randn(1, 1, 28, 28), "2")
    with pytest.raises(EmptyDataError):
        extract_tokens(model, torch.randn(0, 1, 28, 28), "last")
    with pytest.raises(EmptyDataError, match="no images"):
        analyze_model(model, [], layers="last")
    with pytest.raises(NoTokensError, match="CNN feature maps are not analysed"):
        extract_tokens(timm.create_model("resnet10t", num_classes=10), torch.randn(1, 3, 32, 32), "last")
    with pytest.raises(NoTokensError, match="no forward_intermediates"):
        extract_tokens(nn.Linear(4, 4), torch.randn(1, 4), "last")
    assert issubclass(NoTokensError, AnalysisError) and issubclass(AnalysisError, ValueError)


# --------------------------------------------------------------------------------------------------------------
# Image selection
# --------------------------------------------------------------------------------------------------------------

def test_image_folder_selection_first_sorted(tmp_path):
    for cls, names in {"b_cls": ["z.png", "a.png", "m.jpg"], "a_cls": ["2.png", "10.png"], "c_empty": []}.items():
        (tmp_path / cls).mkdir()
        for name in names:
            Image.new("RGB", (8, 8)).save(tmp_path / cls / name)
    (tmp_path / "a_cls" / "notes.txt").write_text("not an image")
    paths, labels, classes = select_image_files(tmp_path, per_class=1)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == ["a_cls/10.png", "b_cls/a.png"]
    assert labels == [0, 1] and classes == ["a_cls", "b_cls"]
    paths, _, _ = select_image_files(tmp_path, per_class=2)
    assert [p.name for p in paths] == ["10.png", "2.png", "a.png", "m.jpg"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(EmptyDataError, match="No images found"):
        select_image_files(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not found"):
        select_image_files(tmp_path / "missing")
    with pytest.raises(AnalysisError, match="per_class"):
        select_image_files(tmp_path, per_class=0)


def test_fashion_mnist_first_test_image_of_each_class():
    from vitkd_zoo.data import load_fashion_mnist

    images, labels, index = select_fashion_mnist(per_class=2)
    all_images, all_labels = load_fashion_mnist("test")
    expected = [int(np.flatnonzero(all_labels == c)[k]) for c in range(10) for k in range(2)]
    assert index.tolist() == expected
    assert labels.tolist() == [c for c in range(10) for _ in range(2)]
    np.testing.assert_array_equal(images, all_images[expected])


# --------------------------------------------------------------------------------------------------------------
# The streamed pipeline
# --------------------------------------------------------------------------------------------------------------

def test_analyze_model_streaming_equals_all_at_once():
    model = tiny_vit()
    dataset, names = build_dataset("fashion-mnist", model, per_class=3)
    assert len(dataset) == 30 and names[0].startswith("fashion-mnist/test/")
    streamed = analyze_model(model, make_loader(dataset, batch_size=7), layers="all", pca_layers="all")
    reread = analyze_model(model, make_loader(dataset, batch_size=4), layers="all", pca_layers="all", cache_bytes=0)
    assert streamed["passes"] == 1 and reread["passes"] == 2
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    tokens = extract_tokens(model, images, "all")
    once = analyze_tokens(tokens, pca_layers="all")
    from_tensor = analyze_model(model, images, layers="all", pca_layers="all")
    for layer in ("0", "1"):
        a, b, c = streamed["per_layer"][layer], reread["per_layer"][layer], once["per_layer"][layer]
        assert from_tensor["per_layer"][layer]["pca"]["ranks"] == c["pca"]["ranks"]
        assert a["svd"]["ranks"] == c["svd"]["ranks"] == np_svd_ranks(tokens[int(layer)].numpy(), THR).tolist()
        assert a["pca"]["ranks"] == b["pca"]["ranks"] == c["pca"]["ranks"]
        assert a["pca"]["ranks"] == np_pca_ranks(tokens[int(layer)].numpy(), THR).tolist()
        np.testing.assert_allclose(a["sep"]["full"]["curve"], c["sep"]["full"]["curve"], atol=1e-12)
        np.testing.assert_allclose(a["sep"]["full"]["curve"], np_sep_curve(tokens[int(layer)].numpy(), "full")[0],
                                   atol=1e-12)
        assert a["svd"]["summary"]["0.99"]["p99"] == pytest.approx(
            np.percentile(np.array(a["svd"]["ranks"])[:, 3], 99))
    assert streamed["num_images"] == 30 and streamed["tokens_per_image"] == 49 and streamed["channels"] == 32
    assert set(streamed["layerwise"]) == {"0", "1"} and "p25" in streamed["layerwise"]["1"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_equals_cpu():
    x = low_rank_tokens(20, 49, 64, rank=6, seed=7)
    for fn in (lambda t: svd_energy_ranks(t, THR), lambda t: dataset_pca_ranks(t, THR), numerical_rank):
        assert torch.equal(fn(x.cuda()).cpu(), fn(x))
    torch.testing.assert_close(sep_curve(x.cuda()).cpu(), sep_curve(x), rtol=0, atol=1e-10)
    model = tiny_vit()
    images = torch.randn(6, 1, 28, 28)
    cpu = analyze_model(model, images.split(3), layers="all")
    gpu = analyze_model(model, images.split(3), layers="all", device="cuda")
    for layer in ("0", "1"):
        assert cpu["per_layer"][layer]["svd"]["ranks"] == gpu["per_layer"][layer]["svd"]["ranks"]
