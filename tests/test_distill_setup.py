"""Config loading and overrides, data sources, the global repeated-aug sampler, the teacher wrapper and taps, and
every pre-training check (each must fail fast with a message that says what to change)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import vitkd_zoo  # noqa: F401
from vitkd_zoo.distill import (
    DEFAULTS,
    ConfigError,
    DatasetError,
    FeatureTap,
    FeatureWidthMismatchError,
    FrozenTeacher,
    LayerNotFoundError,
    RepeatedAugSampler,
    SeededDataset,
    TokenGridMismatchError,
    load_config,
    method_name,
    parse_cli_overrides,
    run_training,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "training" / "configs"
TINY = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2)
TEACHER = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=64, depth=2, num_heads=2, depth_token_only=1)


def tiny_run(**overrides) -> dict:
    """A distillation config on Fashion-MNIST with a random-init CaiT teacher (width 64) and a Lift student."""
    cfg = dict(model="deit_tiny_lift", model_kwargs=dict(TINY, lift_dim=64), teacher="cait_xxs24_224",
               teacher_kwargs=dict(TEACHER, num_classes=10), teacher_pretrained=False, alpha=0.9,
               feature_loss="fft", max_train_samples=256, max_eval_samples=64, epochs=1, global_batch_size=64,
               num_workers=0, log_with=[], progress=False, export=False, auto_augment=None, repeated_aug=1)
    cfg.update(overrides)
    return cfg


# ---------------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------------
def test_cli_overrides_parse_any_key():
    ov = parse_cli_overrides(["--epochs", "1", "--max-train-samples", "2000", "--seed=3", "--ema",
                              "--model-kwargs.embed_dim", "64", "--scale", "[0.5, 1.0]", "--teacher", "null",
                              "--lr", "1e-3"])
    cfg = load_config(CONFIGS / "fmnist" / "lift_softkd_fft.yaml", dict(ov, alpha=0, feature_loss="none"))
    assert cfg["epochs"] == 1 and cfg["max_train_samples"] == 2000 and cfg["seed"] == 3 and cfg["ema"] is True
    assert cfg["model_kwargs"]["embed_dim"] == 64 and cfg["model_kwargs"]["lift_dim"] == 128  # merged, not replaced
    assert cfg["scale"] == [0.5, 1.0] and cfg["teacher"] is None and cfg["lr"] == 1e-3


def test_unknown_and_invalid_keys_are_clear():
    with pytest.raises(ConfigError, match="Did you mean max_train_samples"):
        load_config(None, {"max-train-sample": 10})
    with pytest.raises(ConfigError, match="feature_loss must be one of"):
        load_config(None, {"feature_loss": "l2"})
    with pytest.raises(ConfigError, match="need a teacher"):
        load_config(None, {"alpha": 0.9})
    with pytest.raises(ConfigError, match="not be used"):
        load_config(None, {"teacher": "cait_s24_224"})
    with pytest.raises(ConfigError, match="not found"):
        load_config(CONFIGS / "nope.yaml")


AUTHORS_RUNS = {  # our config -> (student, alpha, feature_loss) of the authors' four scripts
    "lift_softkd_fft": ("deit_tiny_lift", 0.9, "fft"),
    "lift_mse": ("deit_tiny_lift", 0.0, "mse"),
    "widelast_softkd_mse": ("deit_tiny_widelast", 0.9, "mse"),
    "widelast_fft": ("deit_tiny_widelast", 0.0, "fft"),
}


@pytest.mark.parametrize("name", sorted(AUTHORS_RUNS))
def test_imagenet_recipes_match_the_authors_scripts(name):
    cfg = load_config(CONFIGS / "imagenet" / f"{name}.yaml")
    student, alpha, feature_loss = AUTHORS_RUNS[name]
    assert (cfg["model"], cfg["alpha"], cfg["feature_loss"], cfg["feature_adapter"]) == (student, alpha, feature_loss,
                                                                                         "none")
    expected = dict(epochs=300, global_batch_size=2048, lr=2e-3, weight_decay=0.05, auto_augment="rand-m9-mstd0.5-inc1",
                    reprob=0.25, repeated_aug=3, mixup=0.0, cutmix=0.0, label_smoothing=0.1, temperature=1.0,
                    feature_weight=0.2, beta=1.0, warmup_epochs=5, min_lr=1e-5, warmup_lr=1e-6, drop_path_rate=0.0,
                    teacher="cait_s24_224.fb_dist_in1k", teacher_layer=23, eval_ema=False, crop_pct=0.875)
    assert {k: cfg[k] for k in expected} == expected


def test_every_shipped_config_loads_and_baselines_are_present():
    names = {}
    for path in sorted(CONFIGS.glob("*/*.yaml")):
        if path.parent.name == "accelerate" or path.name.startswith("_"):
            continue
        names[f"{path.parent.name}/{path.stem}"] = method_name(load_config(path))
    assert names["imagenet/deit_tiny_softkd"] == "deit+softkd"
    assert names["imagenet/deit_tiny_softkd_pool_fft"] == "deit+softkd+pool-fft"
    assert names["imagenet/deit_tiny_softkd_projector"] == "deit+softkd+projector-mse"
    assert names["imagenet/deit_tiny_scratch"] == "deit+ce"
    assert {p.parent.name for p in CONFIGS.glob("*/*.yaml")} == {"imagenet", "fmnist", "accelerate"}
    assert len(list((CONFIGS / "accelerate").glob("*.yaml"))) == 3
    assert set(DEFAULTS) >= {"alpha", "feature_loss", "feature_adapter", "model_kwargs", "teacher_kwargs"}


# ---------------------------------------------------------------------------------------------------------------
# sampler and seeded augmentation
# ---------------------------------------------------------------------------------------------------------------
def test_repeated_aug_sampler_is_global_and_sharded_once():
    from accelerate.data_loader import BatchSamplerShard
    from torch.utils.data import BatchSampler

    sampler = RepeatedAugSampler(60, repeats=3, seed=0)
    sampler.set_epoch(2)
    order = [i for i, _ in sampler]
    assert len(order) == 60
    again = RepeatedAugSampler(60, repeats=3, seed=0)
    again.set_epoch(2)
    assert [i for i, _ in again] == order  # same global order on every process: seed + epoch only
    again.set_epoch(3)
    assert [i for i, _ in again] != order
    assert all(order[k] == order[k + 1] == order[k + 2] for k in range(0, 57, 3))  # each image 3x in a row
    assert len(set(order)) == 20
    # Accelerate's sharding of the batches: two processes together see each position exactly once
    shards = [list(BatchSamplerShard(BatchSampler(sampler, 6, drop_last=True), num_processes=2, process_index=r))
              for r in range(2)]
    seen = [item for shard in shards for batch in shard for item in batch]
    assert sorted(seen) == sorted(sampler) and len(seen) == 60
    assert not set(map(tuple, shards[0][0])) & set(map(tuple, shards[1][0]))


def test_seeded_dataset_augments_by_sample_seed_not_global_rng():
    from timm.data import create_transform

    from vitkd_zoo.data import FashionMNIST

    tf = create_transform((1, 28, 28), is_training=True, auto_augment="rand-m9-mstd0.5-inc1", re_prob=0.5,
                          mean=(0.286,), std=(0.353,))
    ds = SeededDataset(FashionMNIST("train", tf, max_samples=20))
    torch.manual_seed(0)
    a = ds[(3, 123)][0]
    state = torch.get_rng_state()
    torch.manual_seed(99)
    b = ds[(3, 123)][0]
    assert torch.equal(a, b) and not torch.equal(a, ds[(3, 124)][0])
    torch.manual_seed(0)
    ds[(3, 123)]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched


def test_randaugment_posterize_zero_bits_works_with_new_pillow():
    from vitkd_zoo.distill.data import _posterize, build_transforms

    img = Image.fromarray(np.full((28, 28), 200, dtype=np.uint8))
    assert np.asarray(_posterize(img, 0)).max() == 0 and np.asarray(_posterize(img, 1)).max() == 128
    cfg = load_config(CONFIGS / "imagenet" / "lift_softkd_fft.yaml")
    train, _ = build_transforms(cfg, dict(input_size=(3, 32, 32), interpolation="bicubic", mean=(0.5,) * 3,
                                          std=(0.5,) * 3, crop_pct=0.875))
    rgb = img.convert("RGB")
    for seed in range(200):  # without the fix some of these raise "bits must be between 1 and 8"
        torch.manual_seed(seed)
        import random

        random.seed(seed)
        train(rgb)


# ---------------------------------------------------------------------------------------------------------------
# teacher wrapper and taps
# ---------------------------------------------------------------------------------------------------------------
def test_frozen_teacher_one_forward_cait_features_and_renormalisation():
    model = timm.create_model("cait_xxs24_224", num_classes=10, **TEACHER)
    teacher = FrozenTeacher(model, layer=-1, input_mean=(0.5,), input_std=(0.25,), teacher_mean=(0.25,),
                            teacher_std=(0.5,))
    teacher.train()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    x = torch.randn(2, 1, 28, 28)
    logits, feature = teacher(x)
    assert logits.shape == (2, 10) and feature.shape == (2, 64, 7, 7)
    x_t = (x * 0.25 + 0.5 - 0.25) / 0.5  # back to pixels, then the teacher's normalisation
    torch.testing.assert_close(logits, model(x_t))
    _, inter = model.forward_intermediates(x_t, indices=[1], norm=False)  # the raw last SA block, patch tokens
    torch.testing.assert_close(feature, inter[0])
    with pytest.raises(LayerNotFoundError, match="2 blocks"):
        FrozenTeacher(model, layer=5)


def test_student_taps_paper_feature_and_block_index():
    lift = timm.create_model("deit_tiny_lift", num_classes=10, lift_dim=64, **TINY)
    logits, feature = FeatureTap(lift)(torch.randn(2, 1, 28, 28))
    assert feature.shape == (2, 64, 7, 7)
    plain = timm.create_model("deit_tiny_patch16_224", num_classes=10, **TINY).eval()
    x = torch.randn(2, 1, 28, 28)
    logits, feature = FeatureTap(plain, 0)(x)
    torch.testing.assert_close(logits, plain(x))
    assert feature.shape == (2, 32, 7, 7)
    with pytest.raises(LayerNotFoundError):
        FeatureTap(plain, 2)


# ---------------------------------------------------------------------------------------------------------------
# pre-training checks, through run_training (they must fire before the first step)
# ---------------------------------------------------------------------------------------------------------------
def test_width_mismatch_suggests_lift_dim_or_pooling(tmp_path):
    with pytest.raises(FeatureWidthMismatchError, match=r"lift_dim.*64.*feature_adapter: pool"):
        run_training(tiny_run(model_kwargs=dict(TINY, lift_dim=48)), tmp_path)
    with pytest.raises(FeatureWidthMismatchError, match="feature_adapter: pool"):
        run_training(tiny_run(model="deit_tiny_patch16_224", model_kwargs=TINY, student_layer=-1), tmp_path)
    assert not (tmp_path / "checkpoints").exists()


def test_token_grid_mismatch(tmp_path):
    with pytest.raises(TokenGridMismatchError, match="4x4.*7x7"):
        run_training(tiny_run(model_kwargs=dict(TINY, patch_size=7, lift_dim=64)), tmp_path)


def test_head_smaller_than_the_dataset(tmp_path):
    from vitkd_zoo.distill import SetupError

    with pytest.raises(SetupError, match="num_classes=5 but the dataset has 10 classes"):
        run_training(tiny_run(num_classes=5, teacher=None, alpha=0, feature_loss="none"), tmp_path)


def test_no_such_teacher_layer(tmp_path):
    with pytest.raises(LayerNotFoundError, match="teacher.*no layer 23"):
        run_training(tiny_run(teacher_layer=23), tmp_path)


def _write_folder(root: Path, n_per_class: int = 3, classes=("a", "b")) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n_per_class):
                Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(root / split / c / f"{i}.png")
    return root


@pytest.mark.parametrize("problem, match", [
    ("missing", "dataset folder not found"),
    ("empty", "no images: the dataset is empty"),
    ("no_classes", "no class sub-folders"),
    ("text_file", r"non-image file.*notes\.txt"),
    ("corrupt", r"broken\.png is not a readable image"),
])
def test_dataset_checks(tmp_path, problem, match):
    root = tmp_path / "data"
    if problem == "missing":
        pass
    elif problem == "empty":
        (root / "train" / "a").mkdir(parents=True)
    elif problem == "no_classes":
        (root / "train").mkdir(parents=True)
    else:
        _write_folder(root)
        if problem == "text_file":
            (root / "train" / "a" / "notes.txt").write_text("not an image")
        else:
            (root / "train" / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DatasetError, match=match):
        run_training(tiny_run(dataset="imagefolder", data_dir=str(root), teacher=None, alpha=0, feature_loss="none",
                              verify_images=-1, mean=[0.5], std=[0.25]), tmp_path / "out")


def test_hf_dataset_source(tmp_path):
    datasets = pytest.importorskip("datasets")
    from vitkd_zoo.distill.data import HFImageDataset

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)) for _ in range(4)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["x", "y"])})
    dd = datasets.DatasetDict({s: datasets.Dataset.from_dict({"image": imgs, "label": [0, 1, 0, 1]}, features=features)
                               for s in ("train", "validation")})
    dd.save_to_disk(str(tmp_path / "hf"))
    from vitkd_zoo.distill.data import build_datasets

    cfg = load_config(None, dict(dataset="hf", data_dir=str(tmp_path / "hf")))
    train, evaluation, classes = build_datasets(cfg, dict(input_size=(1, 28, 28)), None, None)
    assert isinstance(train, HFImageDataset) and classes == ["x", "y"] and len(evaluation) == 4
    img, label = train[1]
    assert img.mode == "L" and label == 1
