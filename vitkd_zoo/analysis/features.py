"""Streamed token extraction at the paper's feature point, and the authors' image selection.

Feature point (arXiv 2511.15572, authors' ``analysis/extract_features.py``): the raw output of a block (residual
stream), before the final norm, patch tokens only. We read it through timm's ``forward_intermediates(...,
norm=False, output_fmt='NLC', intermediates_only=True)``, which every timm ViT-family model and both vitkd_zoo
students implement; for CaiT that covers the self-attention blocks only (the class-attention blocks never see
patch tokens alone). Prefix tokens (CLS, register, distillation) are dropped. Models whose intermediates are
spatial maps (``NHWC``, or ``NCHW`` for patch-embedding models such as timm's Swin stages) are flattened to
``(H*W, C)``, as the authors do for Swin. CNNs (no ``patch_embed``) are refused: their maps are not tokens.

Image selection ("first image of each class"): for an ImageFolder-style directory, the first ``per_class`` files
of each class folder by sorted file name; for the built-in Fashion-MNIST, the first ``per_class`` test images of
each class in file order.
"""
from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from PIL import Image
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "AnalysisError", "EmptyDataError", "LayerIndexError", "NoTokensError",
    "IMAGE_EXTENSIONS", "select_image_files", "select_fashion_mnist", "ImageListDataset", "TensorImageDataset",
    "model_input_size", "num_token_layers", "resolve_layers", "eval_transform", "build_dataset", "make_loader",
    "iter_tokens", "extract_tokens",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
FASHION_MNIST = "fashion-mnist"

LayerSpec = str | int | Sequence[int]


class AnalysisError(ValueError):
    """Base class: input that the analysis cannot use; the message names the input and the fix."""


class EmptyDataError(AnalysisError):
    """No images (or no tokens) to analyse."""


class LayerIndexError(AnalysisError, IndexError):
    """A layer index outside the model's blocks."""


class NoTokensError(AnalysisError):
    """The model does not expose per-block token sequences (e.g. a CNN)."""


# ---------------------------------------------------------------------------------------------------------------
# Image selection
# ---------------------------------------------------------------------------------------------------------------

def _check_per_class(per_class: int) -> None:
    if int(per_class) < 1:
        raise AnalysisError(f"per_class must be >= 1, got {per_class}")


def select_image_files(root: str | os.PathLike, per_class: int = 1) -> tuple[list[Path], list[int], list[str]]:
    """The first ``per_class`` images (sorted file names) of each class folder (sorted names) under ``root``.

    A directory with images but no class folders is treated as one class. Returns ``(paths, labels, classes)``.
    """
    _check_per_class(per_class)
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Data directory not found: {root} (pass an ImageFolder-style directory or "
                                f"'{FASHION_MNIST}')")

    def images_in(folder: Path) -> list[Path]:
        return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)

    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels, classes = [], [], []
    if class_dirs:
        for folder in class_dirs:
            found = images_in(folder)[:per_class]
            if found:
                paths += found
                labels += [len(classes)] * len(found)
                classes.append(folder.name)
    else:
        found = images_in(root)[:per_class]
        paths, labels, classes = found, [0] * len(found), [root.name] if found else []
    if not paths:
        raise EmptyDataError(
            f"No images found in {root}: expected class folders holding {', '.join(IMAGE_EXTENSIONS[:5])}, … files "
            "(ImageFolder layout, e.g. val/<class>/<image>.JPEG)")
    return paths, labels, classes


def select_fashion_mnist(
        per_class: int = 1, split: str = "test", root: str | os.PathLike | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The first ``per_class`` images of each class in file order: ``(images uint8 [N,28,28], labels, indices)``,
    ordered by class then file order (like the ImageFolder selection)."""
    from vitkd_zoo.data import load_fashion_mnist

    _check_per_class(per_class)
    images, labels = load_fashion_mnist(split, root=root)
    index = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])
    if index.size == 0:
        raise EmptyDataError(f"Fashion-MNIST {split} split has no images")
    return images[index], labels[index], index


class ImageListDataset(Dataset):
    """Images from a list of files, opened as RGB (or L for one-channel models) and transformed."""

    def __init__(self, paths: Sequence[Path], labels: Sequence[int], transform, mode: str = "RGB"):
        self.paths, self.labels, self.transform, self.mode = list(paths), list(labels), transform, mode

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        with Image.open(self.paths[index]) as img:
            img = img.convert(self.mode)
        return self.transform(img), self.labels[index]


class TensorImageDataset(Dataset):
    """uint8 ``[N, H, W]`` grey images (Fashion-MNIST) -> transformed tensors."""

    def __init__(self, images: np.ndarray, labels: Sequence[int], transform, mode: str = "L"):
        self.images, self.labels, self.transform, self.mode = images, list(labels), transform, mode

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index], mode="L")
        if self.mode != "L":
            img = img.convert(self.mode)
        return self.transform(img), self.labels[index]


# ---------------------------------------------------------------------------------------------------------------
# Model facts
# ---------------------------------------------------------------------------------------------------------------

def model_input_size(model: nn.Module) -> tuple[int, int, int]:
    """``(in_chans, H, W)`` the model was built for (timm's pretrained cfg keeps 224 even for ``img_size=28``)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    chans, height, width = tuple(cfg.get("input_size", (3, 224, 224)))
    patch_embed = getattr(model, "patch_embed", None)
    proj = getattr(patch_embed, "proj", None)
    if isinstance(proj, nn.Conv2d):
        chans = proj.in_channels
    img_size = getattr(patch_embed, "img_size", None)
    if img_size is not None:
        height, width = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    return int(chans), int(height), int(width)


def _check_token_model(model: nn.Module) -> None:
    if not callable(getattr(model, "forward_intermediates", None)):
        raise NoTokensError(
            f"{type(model).__name__} has no forward_intermediates(), so its per-block tokens cannot be read. The "
            "analysis needs a timm ViT-family model (ViT, DeiT, CaiT, EVA, Swin, ...) or a vitkd_zoo student.")


def num_token_layers(model: nn.Module) -> int:
    """Number of blocks ``forward_intermediates`` can tap (ViT/CaiT: ``len(model.blocks)``; Swin: stages)."""
    _check_token_model(model)
    for attr in ("blocks", "layers", "stages"):
        blocks = getattr(model, attr, None)
        if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) > 0:
            return len(blocks)
    chans, height, width = model_input_size(model)
    param = next(model.parameters(), None)
    x = torch.zeros(1, chans, height, width, device=param.device if param is not None else "cpu")
    with torch.inference_mode():
        return len(_call_intermediates(model, x, None, norm=False)[0])


def resolve_layers(spec: LayerSpec, num_layers: int) -> list[int]:
    """``"last"`` | ``"all"`` | ``"i,j"`` (negative counts from the end) | int | sequence -> sorted block indices."""
    if num_layers < 1:
        raise NoTokensError("the model has no blocks to analyse")
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "last":
            return [num_layers - 1]
        if text == "all":
            return list(range(num_layers))
        try:
            values = [int(v) for v in text.split(",") if v.strip()]
        except ValueError:
            raise LayerIndexError(f"layers must be 'last', 'all' or comma-separated block indices like '0,5,-1'; "
                                  f"got {spec!r}") from None
    elif isinstance(spec, int):
        values = [spec]
    else:
        values = [int(v) for v in spec]
    if not values:
        raise LayerIndexError(f"no layer selected by {spec!r}; use 'last', 'all' or indices like '0,-1'")
    bad = [v for v in values if not -num_layers <= v < num_layers]
    if bad:
        raise LayerIndexError(f"layer index {', '.join(map(str, bad))} out of range: the model has {num_layers} "
                              f"blocks (valid: 0..{num_layers - 1}, or -{num_layers}..-1 from the end)")
    return sorted({v % num_layers for v in values})


# ---------------------------------------------------------------------------------------------------------------
# Preprocessing and loading
# ---------------------------------------------------------------------------------------------------------------

def eval_transform(
        model: nn.Module, *, fashion_mnist: bool = False, mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
):
    """The model's timm eval transform (resize, crop_pct, interpolation, mean/std from its pretrained cfg) at the
    size the model was built for; for Fashion-MNIST, as vitkd_zoo's trainer evaluates it: no crop, resize to the
    model's size (if needed), Fashion-MNIST's mean/std on every channel."""
    from timm.data import create_transform, resolve_data_config
    from torchvision import transforms

    chans, height, width = model_input_size(model)
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if mean is None or std is None:
        if fashion_mnist:  # the statistics vitkd_zoo's trainer normalises Fashion-MNIST with, one per channel
            from vitkd_zoo.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD
            mean, std = mean or FASHION_MNIST_MEAN * chans, std or FASHION_MNIST_STD * chans
        else:
            cfg_mean, cfg_std = tuple(cfg.get("mean", (0.485, 0.456, 0.406))), tuple(cfg.get("std", (0.229, 0.224, 0.225)))
            if chans != len(cfg_mean):  # e.g. a 1-channel model whose cfg keeps ImageNet's 3-channel stats
                cfg_mean, cfg_std = (sum(cfg_mean) / len(cfg_mean),) * chans, (sum(cfg_std) / len(cfg_std),) * chans
            mean, std = mean or cfg_mean, std or cfg_std
    mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
    if len(mean) == 1 and chans > 1:
        mean, std = mean * chans, std * chans
    if len(mean) != chans or len(std) != chans:
        raise AnalysisError(f"mean/std need {chans} values for this {chans}-channel model, got {mean} / {std}")
    if fashion_mnist:
        steps = [transforms.ToTensor()]
        if (height, width) != (28, 28):
            steps.insert(0, transforms.Resize((height, width), interpolation=transforms.InterpolationMode.BICUBIC))
        return transforms.Compose(steps + [transforms.Normalize(mean, std)])
    config = resolve_data_config({"input_size": (chans, height, width), "mean": mean, "std": std}, model=model)
    return create_transform(**config, is_training=False)


def build_dataset(
        data: str | os.PathLike, model: nn.Module, per_class: int = 1, *, split: str = "test",
        mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
) -> tuple[Dataset, list[str]]:
    """The selected images, preprocessed for ``model``; ``data`` is a directory or ``"fashion-mnist"``.

    Returns ``(dataset, names)`` where ``names`` identifies each image (relative path or ``fashion-mnist/test/i``).
    """
    chans = model_input_size(model)[0]
    mode = "L" if chans == 1 else "RGB"
    if str(data).lower() == FASHION_MNIST:
        images, labels, index = select_fashion_mnist(per_class, split)
        transform = eval_transform(model, fashion_mnist=True, mean=mean, std=std)
        return TensorImageDataset(images, labels.tolist(), transform, mode), [f"{FASHION_MNIST}/{split}/{i}" for i in index]
    paths, labels, _ = select_image_files(data, per_class)
    transform = eval_transform(model, mean=mean, std=std)
    root = Path(data)
    return ImageListDataset(paths, labels, transform, mode), [str(p.relative_to(root)) for p in paths]


def make_loader(dataset: Dataset, batch_size: int = 32, num_workers: int = 0) -> DataLoader:
    if len(dataset) == 0:
        raise EmptyDataError("the dataset is empty: nothing to analyse")
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)


# ---------------------------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------------------------

def _call_intermediates(model: nn.Module, x: torch.Tensor, indices, *, norm: bool) -> tuple[list, str]:
    """``forward_intermediates`` in NLC (or NHWC for Swin-like models); returns ``(outputs, fmt)``."""
    _check_token_model(model)
    params = inspect.signature(model.forward_intermediates).parameters
    kwargs = dict(indices=indices, norm=norm, intermediates_only=True)
    if "stop_early" in params:
        kwargs["stop_early"] = True
    errors = []
    # NCHW only for patch-embedding models (Swin in timm returns its stage tokens as NCHW maps); a CNN's NCHW
    # feature maps are not tokens.
    formats = ("NLC", "NHWC", "NCHW") if hasattr(model, "patch_embed") else ("NLC", "NHWC")
    for fmt in formats:
        try:
            return model.forward_intermediates(x, output_fmt=fmt, **kwargs), fmt
        except (AssertionError, ValueError, NotImplementedError, TypeError) as e:
            if "out of range" in str(e):
                raise LayerIndexError(f"{type(model).__name__}: {e}") from e
            errors.append(f"{fmt}: {e}")
    raise NoTokensError(
        f"{type(model).__name__} does not return token sequences from forward_intermediates (tried output_fmt "
        f"{', '.join(formats)}: {'; '.join(errors)}). The analysis needs a token model such as a timm ViT, DeiT, CaiT or "
        "Swin, or a vitkd_zoo student; CNN feature maps are not analysed.")


def _patch_tokens(model: nn.Module, y: torch.Tensor, fmt: str, image_hw: tuple[int, int]) -> torch.Tensor:
    if fmt == "NHWC":
        return y.reshape(y.shape[0], -1, y.shape[-1])
    if fmt == "NCHW":
        return y.flatten(2).transpose(1, 2)
    if y.ndim != 3:
        raise NoTokensError(f"{type(model).__name__} returned a {y.ndim}-D intermediate {tuple(y.shape)}; expected "
                            "[B, tokens, channels]")
    # timm's ViT already strips prefix tokens; other models may not. Drop them when tokens = prefix + patch grid.
    prefix = int(getattr(model, "num_prefix_tokens", 0) or 0)
    patch_embed = getattr(model, "patch_embed", None)
    if prefix and hasattr(patch_embed, "dynamic_feat_size"):
        grid_h, grid_w = patch_embed.dynamic_feat_size(image_hw)
        if y.shape[1] == grid_h * grid_w + prefix:
            y = y[:, prefix:]
    return y


def iter_tokens(
        model: nn.Module, batches: Iterable, layers: Sequence[int], *, device: torch.device | str | None = None,
        norm: bool = False, progress: bool = False, total: int | None = None, desc: str = "extracting",
) -> Iterator[dict[int, torch.Tensor]]:
    """Yield ``{layer: tokens [B, T, C] float32 on device}`` per input batch; nothing is kept between batches.

    ``batches`` yields image tensors ``[B, C, H, W]`` or ``(images, labels)`` pairs (a DataLoader). ``model`` is
    put in eval mode and moved to ``device`` (default: where its parameters are); ``norm=True`` applies the model's
    final norm (for Lift: the lift) to every tap.
    """
    layers = list(layers)
    if not layers:
        raise LayerIndexError("no layers selected")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval().to(device)
    iterator = batches
    if progress:
        from tqdm.auto import tqdm
        iterator = tqdm(batches, total=total, desc=desc, unit="batch", leave=False)
    seen = 0
    with torch.inference_mode():
        for batch in iterator:
            images = batch[0] if isinstance(batch, (tuple, list)) else batch
            if images.shape[0] == 0:
                continue
            outputs, fmt = _call_intermediates(model, images.to(device), layers, norm=norm)
            if len(outputs) != len(layers):
                raise LayerIndexError(f"{type(model).__name__} returned {len(outputs)} intermediates for layers "
                                      f"{layers}")
            seen += images.shape[0]
            yield {layer: _patch_tokens(model, y, fmt, tuple(images.shape[-2:])).float()
                   for layer, y in zip(layers, outputs, strict=True)}
    if seen == 0:
        raise EmptyDataError("no images to analyse: the data yielded no batches")


def extract_tokens(
        model: nn.Module, images: torch.Tensor | Iterable, layers: LayerSpec = "last", *, batch_size: int = 64,
        device: torch.device | str | None = None, norm: bool = False,
) -> dict[int, torch.Tensor]:
    """All-at-once convenience for small runs: ``{layer: tokens [N, T, C]}`` on CPU.

    ``images`` is a preprocessed ``[N, C, H, W]`` tensor or an iterable of batches. For large runs use
    ``vitkd_zoo.analysis.analyze_model``, which streams.
    """
    layer_ids = resolve_layers(layers, num_token_layers(model))
    if torch.is_tensor(images):
        if images.shape[0] == 0:
            raise EmptyDataError("images is empty: nothing to analyse")
        images = images.split(batch_size)
    chunks: dict[int, list[torch.Tensor]] = {layer: [] for layer in layer_ids}
    for out in iter_tokens(model, images, layer_ids, device=device, norm=norm):
        for layer, tokens in out.items():
            chunks[layer].append(tokens.cpu())
    return {layer: torch.cat(parts) for layer, parts in chunks.items()}
