"""Shared fixtures. Hub fixtures (prefix ``hub_``) belong to tests/test_hub*.py; keep other concerns' fixtures apart."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

# A tiny Lift student: real architecture, 28 px RGB Fashion-MNIST, 10 classes (~34k params).
HUB_TINY_ARGS = dict(img_size=28, patch_size=7, embed_dim=32, depth=2, num_heads=2, num_classes=10)
HUB_TINY_LIFT = dict(HUB_TINY_ARGS, lift_dim=64)
HUB_TINY_WIDELAST = dict(HUB_TINY_ARGS, wide_dim=64, wide_heads=2)
HUB_DATA_CONFIG = dict(mean=(0.286, 0.286, 0.286), std=(0.353, 0.353, 0.353), crop_pct=1.0, interpolation="bilinear")


def hub_card(**overrides) -> dict:
    from vitkd_zoo.data import FASHION_MNIST_CLASSES

    card = dict(
        teacher="vit_tiny (dim 128, depth 4; trained on Fashion-MNIST)",
        method="Lift + SoftKD (alpha 0.9, T 1) + MSE feature loss (w 0.2)",
        dataset="fashion_mnist", eval_split="test", metrics={"top1": 71.25, "top5": 98.5},
        baseline_metrics={"top1": 69.5, "top5": 98.1}, recipe={"epochs": 1, "optimizer": "AdamW, lr 1e-3"},
        label_names=list(FASHION_MNIST_CLASSES), base_model="timm/deit_tiny_patch16_224.fb_in1k",
    )
    card.update(overrides)
    return card


def hub_build_cache(cache_dir: Path, repo_id: str, files: dict[str, Path | bytes]) -> Path:
    """A hand-built Hugging Face cache (environment.md §5 option A): refs/main -> snapshots/<sha>/ plain files."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    root = Path(cache_dir) / f"models--{repo_id.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    for name, src in files.items():
        dst = snapshot / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(src, bytes):
            dst.write_bytes(src)
        else:
            shutil.copyfile(src, dst)
    (root / "refs").mkdir(parents=True, exist_ok=True)
    (root / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture(scope="session")
def hub_images():
    """Eight real Fashion-MNIST test images as RGB PIL images, and the same as a normalised batch."""
    from PIL import Image

    from vitkd_zoo.data import load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    pil = [Image.fromarray(images[i], mode="L").convert("RGB") for i in range(8)]
    x = torch.from_numpy(np.stack([np.asarray(p) for p in pil])).permute(0, 3, 1, 2).float().div(255)
    mean = torch.tensor(HUB_DATA_CONFIG["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(HUB_DATA_CONFIG["std"]).view(1, 3, 1, 1)
    return pil, (x - mean) / std, labels[:8]


@pytest.fixture(scope="session")
def hub_lift_export(tmp_path_factory):
    """(model, folder): a tiny Lift student with non-trivial weights, exported once per session."""
    import timm

    import vitkd_zoo  # noqa: F401
    from vitkd_zoo.hub import save_pretrained

    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_lift", **HUB_TINY_LIFT).eval()
    folder = save_pretrained(model, tmp_path_factory.mktemp("hub") / "deit_tiny_lift-fmnist", card=hub_card(),
                             data_config=HUB_DATA_CONFIG, benchmark_seconds=0.05)
    return model, folder


@pytest.fixture(scope="session")
def hub_widelast_export(tmp_path_factory):
    import timm

    import vitkd_zoo  # noqa: F401
    from vitkd_zoo.hub import save_pretrained

    torch.manual_seed(1)
    model = timm.create_model("deit_tiny_widelast", **HUB_TINY_WIDELAST).eval()
    folder = save_pretrained(model, tmp_path_factory.mktemp("hub") / "deit_tiny_widelast-fmnist",
                             card=hub_card(method="WideLast + SoftKD + MSE", base_model=None),
                             data_config=HUB_DATA_CONFIG, benchmark_seconds=0.05)
    return model, folder
