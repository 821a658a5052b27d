"""``vitkd-zoo analyze``: valid JSON and non-empty PNGs on tiny models, the checkpoint path, and clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import vitkd_zoo  # noqa: F401
from vitkd_zoo.analysis import analyze_model, build_dataset, make_loader
from vitkd_zoo.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY_VIT = ["--model-arg", "img_size=28", "--model-arg", "in_chans=1", "--model-arg", "patch_size=4",
            "--model-arg", "embed_dim=32", "--model-arg", "depth=2", "--model-arg", "num_heads=2",
            "--model-arg", "num_classes=10"]
LIFT_ARGS = dict(img_size=28, patch_size=7, in_chans=1, embed_dim=32, depth=2, num_heads=2, lift_dim=64,
                 num_classes=10)


def check_pngs(out, names):
    for name in names:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 10_000, name


def test_analyze_fashion_mnist_writes_json_and_plots(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["analyze", "--model", "vit_tiny_patch16_224", *TINY_VIT, "--data", "fashion-mnist", "--per-class",
               "2", "--layers", "all", "--out", str(out), "--quiet", "--batch-size", "8"])
    assert rc == 0
    report = json.loads((out / "analysis.json").read_text())
    model = report["models"][0]
    assert report["data"] == "fashion-mnist" and report["split"] == "test" and not report["compare"]
    assert model["num_images"] == 20 and model["layers"] == [0, 1] and model["last_layer"] == 1
    assert len(model["images"]) == 20 and model["images"][0] == "fashion-mnist/test/19"  # first T-shirt in file order
    last = model["per_layer"]["1"]
    assert len(last["svd"]["ranks"]) == 20 and len(last["pca"]["ranks"]) == 20
    assert set(last["svd"]["summary"]) == {"0.8", "0.9", "0.95", "0.99"}
    assert len(last["sep"]["full"]["curve"]) == 32 and len(last["sep"]["folded"]["curve"]) == 17
    assert all(0 < b <= 1 for b in last["sep"]["full"]["bandwidth"].values())
    assert "pca" not in model["per_layer"]["0"]  # the paper's PCA is on the last block
    check_pngs(out, ["rank_histograms.png", "rank_vs_layer.png", "sep_curve.png", "svd_vs_pca.png"])
    printed = capsys.readouterr().out
    assert "| vit_tiny_patch16_224 | 1 | 32 | 20 |" in printed and "wrote" in printed


def test_analyze_compare_image_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "val"
    for cls in ("n01", "n02", "n03"):
        (data / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(data / cls / f"img_{i}.png")
    out = tmp_path / "cmp"
    rc = main([
        "analyze", "--compare", "cait_xxs24_224", "deit_tiny_widelast", "--data", str(data), "--out", str(out),
        "--model-arg", "img_size=32", "--model-arg", "patch_size=8", "--model-arg", "depth=2",
        "--model-arg", "num_classes=10", "--student-arg", "embed_dim=32", "--student-arg", "num_heads=2",
        "--student-arg", "wide_dim=64", "--student-arg", "wide_heads=2", "--quiet", "--layers", "last",
    ])
    assert rc == 0
    report = json.loads((out / "analysis.json").read_text())
    teacher, student = report["models"]
    assert report["compare"] and teacher["role"] == "teacher" and student["role"] == "student"
    assert teacher["images"] == ["n01/img_0.png", "n02/img_0.png", "n03/img_0.png"]
    assert teacher["channels"] == 192 and teacher["tokens_per_image"] == 16  # CaiT SA-block tokens only
    assert student["channels"] == 64 and student["last_layer"] == 1
    check_pngs(out, ["rank_histograms.png", "rank_vs_layer.png", "sep_curve.png", "svd_vs_pca.png"])
    printed = capsys.readouterr().out
    assert "| cait_xxs24_224 |" in printed and "| deit_tiny_widelast |" in printed


def test_analyze_checkpoint_matches_in_memory_model(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(3)
    model = timm.create_model("deit_tiny_lift", **LIFT_ARGS).eval()
    ckpt = tmp_path / "lift.safetensors"
    save_file(model.state_dict(), str(ckpt))
    out = tmp_path / "ckpt"
    args = [a for k, v in LIFT_ARGS.items() if k != "num_classes" for a in ("--model-arg", f"{k}={v}")]
    rc = main(["analyze", "--model", "deit_tiny_lift", "--checkpoint", str(ckpt), *args, "--data", "fashion-mnist",
               "--layers", "last", "--out", str(out), "--quiet", "--no-plots"])
    assert rc == 0
    got = json.loads((out / "analysis.json").read_text())["models"][0]
    dataset, _ = build_dataset("fashion-mnist", model, 1)
    expected = analyze_model(model, make_loader(dataset, 32), layers="last")
    assert got["per_layer"]["1"]["svd"]["ranks"] == expected["per_layer"]["1"]["svd"]["ranks"]
    assert got["per_layer"]["1"]["pca"]["ranks"] == expected["per_layer"]["1"]["pca"]["ranks"]
    assert got["checkpoint"] == str(ckpt) and not list(out.glob("*.png"))


@pytest.mark.parametrize("extra, message", [
    (["--model", "vit_tiny_patch16_224", *TINY_VIT, "--layers", "5"], "layer index 5 out of range: the model has 2"),
    (["--model", "vit_tiny_patch16_224", *TINY_VIT, "--thresholds", "80,99"], "fractions in (0, 1]"),
    (["--model", "resnet10t", "--model-arg", "num_classes=10"], "CNN feature maps are not analysed"),
    (["--model", "vit_tiny_patch16_224"], "exactly one of --model"),  # with --compare below
    (["--model", "no_such_model_xyz"], "Unknown model"),
])
def test_analyze_errors_are_clear(tmp_path, capsys, extra, message):
    argv = ["analyze", *extra, "--data", "fashion-mnist", "--out", str(tmp_path / "err"), "--quiet"]
    if message.startswith("exactly one"):
        argv += ["--compare", "a", "b"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_analyze_empty_and_missing_data(tmp_path, capsys):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    base = ["analyze", "--model", "vit_tiny_patch16_224", *TINY_VIT, "--out", str(tmp_path / "o"), "--quiet"]
    assert main(base + ["--data", str(tmp_path / "empty")]) == 2
    assert "No images found" in capsys.readouterr().err
    assert main(base + ["--data", str(tmp_path / "missing")]) == 2
    assert "not found" in capsys.readouterr().err


def test_analyze_options_norm_and_no_pca(tmp_path, capsys):
    out = tmp_path / "opts"
    args = [a for k, v in LIFT_ARGS.items() for a in ("--model-arg", f"{k}={v}")]
    rc = main(["analyze", "--model", "deit_tiny_lift", *args, "--data", "fashion-mnist", "--layers", "-1",
               "--pca-layers", "none", "--norm", "--thresholds", "0.9,0.99", "--sep-thresholds", "0.5",
               "--out", str(out), "--quiet"])
    assert rc == 0
    model = json.loads((out / "analysis.json").read_text())["models"][0]
    layer = model["per_layer"]["1"]
    assert layer["channels"] == 64  # --norm: the lifted tokens Lift distills, not the 32-wide trunk
    assert "pca" not in layer and set(layer["svd"]["summary"]) == {"0.9", "0.99"}
    assert list(layer["sep"]["full"]["bandwidth"]) == ["0.5"]
    assert not (out / "svd_vs_pca.png").exists() and (out / "sep_curve.png").stat().st_size > 10_000
    assert "| deit_tiny_lift | 1 | 64 | 10 | " in capsys.readouterr().out


def test_display_name(tmp_path):
    from vitkd_zoo.analysis.cli import display_name

    (tmp_path / "lift_kd" / "export").mkdir(parents=True)
    assert display_name(str(tmp_path / "lift_kd" / "export")) == "lift_kd"
    assert display_name(f"local-dir:{tmp_path / 'lift_kd'}") == "lift_kd"
    assert display_name("hf-hub:org/name") == "hf-hub:org/name" and display_name("cait_s24_224") == "cait_s24_224"
