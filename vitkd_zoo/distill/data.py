"""Datasets, transforms and the repeated-augmentation sampler for the trainer.

Sources (config key ``dataset``):

* ``fashion_mnist``: the built-in Fashion-MNIST (Debian package files or a normal download), class-balanced subsets.
* ``imagefolder``: ``<data_dir>/<split>/<class>/<image>``; scanned up front so a missing or empty folder and
  non-image files fail before training with the offending paths.
* ``hf``: a Hugging Face dataset, ``datasets.load_from_disk(data_dir)`` or ``load_dataset(hf_name, split=...)``.
* anything else (``wds/...``, ``hfds/...``, ``tfds/...``, ``torch/...``): timm's ``create_dataset``. These readers
  shard by rank themselves, so their loaders are not sharded again by Accelerate.

Transforms come from timm's ``create_transform`` (RandomResizedCrop, flip, RandAugment, random erasing).

Sharding happens exactly once: ``RepeatedAugSampler`` produces one *global* order (the same on every process: it
depends only on seed and epoch) and Accelerate splits its batches across processes. Each item it yields carries
a per-sample seed, and ``SeededDataset`` applies the augmentation under that seed, so a run resumed mid-epoch (or
with a different number of loader workers) sees exactly the same augmented images.
"""
from __future__ import annotations

import contextlib
import logging
import os
import random
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

__all__ = [
    "DatasetError", "IMG_EXTENSIONS", "resolve_data_config", "build_transforms", "build_datasets",
    "scan_image_folder", "ImageFolderDataset", "HFImageDataset", "RepeatedAugSampler", "SeededDataset",
]

_logger = logging.getLogger(__name__)

IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class DatasetError(ValueError):
    """The dataset is missing, empty or holds files that are not images; the message names them."""


# ----------------------------------------------------------------------------------------------------------------
# data config and transforms
# ----------------------------------------------------------------------------------------------------------------
def resolve_data_config(cfg: Mapping[str, Any], model: torch.nn.Module) -> dict[str, Any]:
    """Input size, mean/std, interpolation and crop_pct: config keys, else dataset defaults, else the model's cfg."""
    from timm.data import resolve_model_data_config

    base = resolve_model_data_config(model)
    in_chans = getattr(getattr(model, "patch_embed", None), "proj", None)
    in_chans = in_chans.in_channels if in_chans is not None else base["input_size"][0]
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None) or base["input_size"][1:]
    input_size = tuple(cfg["input_size"]) if cfg["input_size"] else (in_chans, *img_size)
    mean, std = base["mean"], base["std"]
    if cfg["dataset"] == "fashion_mnist":
        from vitkd_zoo.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD

        mean, std = FASHION_MNIST_MEAN * input_size[0], FASHION_MNIST_STD * input_size[0]
    if cfg["mean"] is not None:
        mean = tuple(cfg["mean"])
    if cfg["std"] is not None:
        std = tuple(cfg["std"])
    if len(mean) != input_size[0] or len(std) != input_size[0]:
        raise DatasetError(f"mean {tuple(mean)} / std {tuple(std)} do not have one value per input channel "
                           f"({input_size[0]}): set `mean` and `std` in the config")
    crop_pct = cfg["crop_pct"] if cfg["crop_pct"] is not None else base.get("crop_pct", 0.875)
    if cfg["dataset"] == "fashion_mnist" and cfg["crop_pct"] is None:
        crop_pct = 1.0
    return dict(input_size=tuple(int(v) for v in input_size), mean=tuple(float(v) for v in mean),
                std=tuple(float(v) for v in std), interpolation=cfg["interpolation"] or base.get("interpolation",
                                                                                                     "bicubic"),
                crop_pct=float(crop_pct))


def build_transforms(cfg: Mapping[str, Any], data_config: Mapping[str, Any]) -> tuple[Callable, Callable]:
    """timm train / eval transforms for ``data_config`` (random erasing is applied to the normalised tensor)."""
    from timm.data import create_transform

    common = dict(input_size=data_config["input_size"], interpolation=data_config["interpolation"],
                  mean=data_config["mean"], std=data_config["std"])
    train = create_transform(
        is_training=True, scale=tuple(cfg["scale"]) if cfg["scale"] else None, hflip=cfg["hflip"],
        color_jitter=cfg["color_jitter"], auto_augment=cfg["auto_augment"] or None, re_prob=cfg["reprob"],
        re_mode=cfg["remode"], re_count=cfg["recount"], **common)
    evaluation = create_transform(is_training=False, crop_pct=data_config["crop_pct"], **common)
    _fix_posterize(train)
    return train, evaluation


def _posterize(img, bits_to_keep, **__):
    """timm's posterize for Pillow >= 13, which rejects 0 bits: 0 bits keeps nothing (a black image), as older
    Pillow did. RandAugment's PosterizeIncreasing reaches 0 bits at magnitude 9 with mstd noise."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    from PIL import ImageOps

    return ImageOps.posterize(img, bits_to_keep)


def _fix_posterize(transform) -> None:
    from timm.data import auto_augment

    for t in getattr(transform, "transforms", []):
        for op in getattr(t, "ops", []):
            if getattr(op, "aug_fn", None) is auto_augment.posterize:
                op.aug_fn = _posterize


# ----------------------------------------------------------------------------------------------------------------
# datasets
# ----------------------------------------------------------------------------------------------------------------
def scan_image_folder(root: str | os.PathLike, verify: int = 64) -> tuple[list[tuple[str, int]], list[str]]:
    """``(samples, classes)`` of ``root/<class>/<file>``; raises ``DatasetError`` if ``root`` is missing, has no
    class folders or no images, or holds non-image files (hidden files are ignored). The first ``verify`` images
    (-1: all) are decoded to catch files that only look like images."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder not found: {root}. Expected <data_dir>/<split>/<class>/<image>.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DatasetError(f"{root} has no class sub-folders: expected {root}/<class>/<image> (ImageFolder layout)")
    samples, bad = [], []
    for label, name in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / name):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in sorted(filenames):
                if fname.startswith("."):
                    continue
                path = os.path.join(dirpath, fname)
                (samples if fname.lower().endswith(IMG_EXTENSIONS) else bad).append(
                    (path, label) if fname.lower().endswith(IMG_EXTENSIONS) else path)
    if bad:
        raise DatasetError(f"{root} holds {len(bad)} non-image file(s), e.g. {', '.join(bad[:5])}. Remove or move "
                           f"them (accepted extensions: {', '.join(IMG_EXTENSIONS)}).")
    if not samples:
        raise DatasetError(f"{root} has class folders ({', '.join(classes[:5])}) but no images: the dataset is empty")
    check = samples if verify < 0 else samples[:verify]
    for path, _ in check:
        try:
            with Image.open(path) as img:
                img.verify()
        except Exception as e:  # PIL raises many types for undecodable files
            raise DatasetError(f"{path} is not a readable image ({type(e).__name__}: {e}). Remove or replace it.") from e
    return samples, classes


class ImageFolderDataset(Dataset):
    """``(image, label)`` from ``scan_image_folder`` samples, images converted to ``mode`` (RGB or L)."""

    def __init__(self, samples: Sequence[tuple[str, int]], classes: Sequence[str], transform=None, mode: str = "RGB"):
        self.samples, self.classes, self.transform, self.mode = list(samples), list(classes), transform, mode
        self.targets = [s[1] for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        with Image.open(path) as img:
            img = img.convert(self.mode)
        if self.transform is not None:
            img = self.transform(img)
        return img, label


class HFImageDataset(Dataset):
    """A Hugging Face ``datasets.Dataset`` with an image and a label column, as ``(image, label)``."""

    def __init__(self, ds, image_key: str | None = None, label_key: str | None = None, transform=None,
                 mode: str = "RGB"):
        cols = ds.column_names
        self.image_key = image_key or next((c for c in ("image", "img", "pixel_values") if c in cols), None)
        self.label_key = label_key or next((c for c in ("label", "labels") if c in cols), None)
        if self.image_key not in cols or self.label_key not in cols:
            raise DatasetError(f"Hugging Face dataset columns {cols}: set image_key / label_key "
                               f"(found image={self.image_key!r}, label={self.label_key!r})")
        feature = ds.features[self.label_key]
        self.classes = list(getattr(feature, "names", None) or range(int(max(ds[self.label_key])) + 1))
        self.ds, self.transform, self.mode = ds, transform, mode
        self.targets = list(ds[self.label_key])

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int):
        row = self.ds[int(index)]
        img = row[self.image_key]
        if not isinstance(img, Image.Image):
            img = Image.fromarray(np.asarray(img))
        img = img.convert(self.mode)
        if self.transform is not None:
            img = self.transform(img)
        return img, int(row[self.label_key])


def _subset(ds: Dataset, n: int | None) -> Dataset:
    if n is None or n >= len(ds):
        return ds
    return torch.utils.data.Subset(ds, range(int(n)))


def _load_hf(cfg: Mapping[str, Any], split: str):
    try:
        import datasets
    except ImportError as e:
        raise DatasetError("dataset: hf needs the `datasets` package (pip install vitkd-zoo[data])") from e
    if cfg["data_dir"]:
        root = Path(cfg["data_dir"])
        if not root.exists():
            raise DatasetError(f"Hugging Face dataset folder not found: {root} (expected a save_to_disk folder)")
        loaded = datasets.load_from_disk(str(root))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DatasetError(f"{root} has splits {list(loaded)}, not {split!r}: set train_split / eval_split")
            loaded = loaded[split]
        return loaded
    if not cfg["hf_name"]:
        raise DatasetError("dataset: hf needs `hf_name` (a Hub dataset id) or `data_dir` (a save_to_disk folder)")
    return datasets.load_dataset(cfg["hf_name"], split=split)


def build_datasets(cfg: Mapping[str, Any], data_config: Mapping[str, Any], train_transform, eval_transform):
    """``(train_ds, eval_ds, classes)``; map-style datasets except for timm reader names (iterable, pre-sharded)."""
    kind = cfg["dataset"]
    mode = "L" if data_config["input_size"][0] == 1 else "RGB"
    if kind == "fashion_mnist":
        from vitkd_zoo.data import FashionMNIST

        eval_split = "test" if cfg["eval_split"] in ("validation", "val", "test") else cfg["eval_split"]
        train = FashionMNIST("train", train_transform, root=cfg["data_dir"], max_samples=cfg["max_train_samples"],
                             rgb=mode == "RGB")
        evaluation = FashionMNIST(eval_split, eval_transform, root=cfg["data_dir"],
                                  max_samples=cfg["max_eval_samples"], rgb=mode == "RGB")
        return train, evaluation, list(FashionMNIST.classes)
    if kind == "imagefolder":
        if not cfg["data_dir"]:
            raise DatasetError("dataset: imagefolder needs data_dir (<data_dir>/<split>/<class>/<image>)")
        root = Path(cfg["data_dir"])
        if not root.is_dir():
            raise DatasetError(f"dataset folder not found: {root}")
        eval_root = root / cfg["eval_split"]
        if not eval_root.is_dir() and cfg["eval_split"] == "validation" and (root / "val").is_dir():
            eval_root = root / "val"
        train_samples, classes = scan_image_folder(root / cfg["train_split"], cfg["verify_images"])
        eval_samples, eval_classes = scan_image_folder(eval_root, min(cfg["verify_images"], 8))
        if eval_classes != classes:
            raise DatasetError(f"train classes ({len(classes)}) and eval classes ({len(eval_classes)}) differ; e.g. "
                               f"{sorted(set(classes) ^ set(eval_classes))[:5]}")
        train = _subset(ImageFolderDataset(train_samples, classes, train_transform, mode), cfg["max_train_samples"])
        evaluation = _subset(ImageFolderDataset(eval_samples, classes, eval_transform, mode), cfg["max_eval_samples"])
        return train, evaluation, classes
    if kind == "hf":
        train_hf, eval_hf = _load_hf(cfg, cfg["train_split"]), _load_hf(cfg, cfg["eval_split"])
        train = HFImageDataset(train_hf, cfg["image_key"], cfg["label_key"], train_transform, mode)
        evaluation = HFImageDataset(eval_hf, cfg["image_key"], cfg["label_key"], eval_transform, mode)
        if len(train) == 0:
            raise DatasetError(f"Hugging Face dataset split {cfg['train_split']!r} is empty")
        return _subset(train, cfg["max_train_samples"]), _subset(evaluation, cfg["max_eval_samples"]), train.classes
    # timm readers (wds/..., hfds/..., tfds/..., torch/...): iterable and rank-aware
    from timm.data import create_dataset

    if cfg["data_dir"] and not str(cfg["data_dir"]).startswith(("http", "pipe:", "gs:", "s3:")) \
            and not Path(cfg["data_dir"]).exists():
        raise DatasetError(f"dataset folder not found: {cfg['data_dir']}")
    img_mode = "L" if mode == "L" else "RGB"

    def make(split: str, is_training: bool, limit: int | None, transform):
        kwargs = dict(root=cfg["data_dir"], split=split, is_training=is_training, batch_size=1, seed=cfg["seed"],
                      input_img_mode=img_mode, transform=transform)
        ds = create_dataset(kind, **kwargs)
        # timm treats num_samples as the epoch length (and cycles past the end): only ever shorten the split
        if limit is not None and hasattr(ds, "__len__") and limit < len(ds):
            ds = create_dataset(kind, num_samples=int(limit), **kwargs)
        return ds

    train = make(cfg["train_split"], True, cfg["max_train_samples"], train_transform)
    evaluation = make(cfg["eval_split"], False, cfg["max_eval_samples"], eval_transform)
    reader = getattr(train, "reader", None)
    class_to_idx = getattr(reader, "class_to_idx", None) or {}
    classes = sorted(class_to_idx, key=class_to_idx.get) if class_to_idx else None
    return train, evaluation, classes


# ----------------------------------------------------------------------------------------------------------------
# sampling
# ----------------------------------------------------------------------------------------------------------------
class RepeatedAugSampler(Sampler):
    """Global repeated-augmentation sampler (DeiT's RASampler without the rank logic).

    Each epoch: a permutation seeded by ``(seed, epoch)``, every index repeated ``repeats`` times in a row, cut to
    ``len(dataset)`` items (so an epoch has the usual length and ~1/repeats unique images, as in DeiT). The order is
    identical on every process; Accelerate shards its batches, so each item is seen by exactly one process. Items
    are ``(index, sample_seed)`` pairs for ``SeededDataset``. ``repeats=1`` is a plain seeded shuffle.
    """

    def __init__(self, num_samples: int, repeats: int = 1, seed: int = 0, shuffle: bool = True):
        if num_samples <= 0:
            raise DatasetError("the training dataset is empty")
        self.num_samples, self.repeats, self.seed, self.shuffle = num_samples, max(1, int(repeats)), seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(int(self.seed) * 1_000_003 + self.epoch)
        order = torch.randperm(self.num_samples, generator=g) if self.shuffle else torch.arange(self.num_samples)
        if self.repeats > 1:
            order = order.repeat_interleave(self.repeats)[: self.num_samples]
        seeds = torch.randint(0, 2 ** 31 - 1, (self.num_samples,), generator=g)
        return iter(zip(order.tolist(), seeds.tolist(), strict=True))


@contextlib.contextmanager
def _seeded(seed: int):
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)  # CPU only: torch.manual_seed would also reset the CUDA generators
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


class SeededDataset(Dataset):
    """Runs ``dataset[index]`` (and so its random transform) under ``sample_seed`` for ``(index, sample_seed)``
    keys, leaving the caller's RNG untouched: augmentations depend on the sample, not on worker or resume state."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if isinstance(key, (tuple, list)):
            index, seed = key
            with _seeded(seed):
                return self.dataset[index]
        return self.dataset[key]
