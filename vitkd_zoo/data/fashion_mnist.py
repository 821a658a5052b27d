"""Fashion-MNIST (Zalando, MIT) as a real, offline-friendly dataset.

Debian's ``dataset-fashion-mnist`` package ships the original gzipped IDX files under
``/usr/share/datasets/fashion-mnist``; ``make setup`` installs it when it can. Without it we fall back to the
normal torchvision download into ``~/.cache/vitkd_zoo``. Images are returned as PIL ``L`` images so the usual
timm / torchvision transforms apply unchanged.
"""
from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "FASHION_MNIST_CLASSES", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD",
    "find_fashion_mnist", "load_fashion_mnist", "FashionMNIST",
]

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_MEAN = (0.2860,)
FASHION_MNIST_STD = (0.3530,)

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _cache_dir() -> Path:
    return Path(os.environ.get("VITKD_CACHE", Path.home() / ".cache" / "vitkd_zoo")) / "fashion-mnist"


def _has_files(folder: Path) -> bool:
    return all(
        (folder / name).exists() or (folder / f"{name}.gz").exists() for pair in _FILES.values() for name in pair
    )


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path | None:
    """Return the folder holding the four IDX files, or None. Looks at ``root``, ``$VITKD_FASHION_MNIST``,
    the Debian package, then our download cache (torchvision's ``FashionMNIST/raw`` layout included)."""
    candidates = [root, os.environ.get("VITKD_FASHION_MNIST"), DEBIAN_DIR, _cache_dir()]
    for cand in candidates:
        if not cand:
            continue
        cand = Path(cand)
        for folder in (cand, cand / "FashionMNIST" / "raw"):
            if folder.is_dir() and _has_files(folder):
                return folder
    return None


def _download(root: Path) -> Path:
    from torchvision.datasets import FashionMNIST as TVFashionMNIST

    print(f"Fashion-MNIST not found locally; downloading with torchvision into {root}")
    root.mkdir(parents=True, exist_ok=True)
    for train in (True, False):
        TVFashionMNIST(str(root), train=train, download=True)
    return root / "FashionMNIST" / "raw"


def _read_idx(path: Path, header: int) -> np.ndarray:
    gz = path.with_name(path.name + ".gz")
    opener = (lambda: gzip.open(gz, "rb")) if gz.exists() else (lambda: open(path, "rb"))
    with opener() as f:
        data = f.read()
    return np.frombuffer(data, dtype=np.uint8, offset=header)


def load_fashion_mnist(
        split: str = "train", root: str | os.PathLike | None = None, download: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split as ``(images uint8 [N, 28, 28], labels int64 [N])``."""
    if split not in _FILES:
        raise ValueError(f"Fashion-MNIST split must be 'train' or 'test', got {split!r}")
    folder = find_fashion_mnist(root)
    if folder is None:
        if not download:
            raise FileNotFoundError(
                "Fashion-MNIST not found. Install Debian's package (`apt-get install dataset-fashion-mnist`), "
                "set VITKD_FASHION_MNIST to a folder with the IDX files, or allow the download."
            )
        folder = _download(Path(root) if root else _cache_dir())
    img_name, lbl_name = _FILES[split]
    images = _read_idx(folder / img_name, 16).reshape(-1, 28, 28)
    labels = _read_idx(folder / lbl_name, 8).astype(np.int64)
    if len(images) != len(labels):
        raise RuntimeError(f"Fashion-MNIST files in {folder} are inconsistent: {len(images)} images, {len(labels)} labels")
    return images, labels


class FashionMNIST(Dataset):
    """Fashion-MNIST as a map-style dataset of ``(PIL image or transformed tensor, label)``.

    ``max_samples`` keeps a class-balanced, deterministic prefix (the first k of each class) so small runs still
    see every class.
    """

    classes = FASHION_MNIST_CLASSES

    def __init__(
            self,
            split: str = "train",
            transform: Callable | None = None,
            root: str | os.PathLike | None = None,
            max_samples: int | None = None,
            rgb: bool = False,
            download: bool = True,
    ):
        images, labels = load_fashion_mnist(split, root=root, download=download)
        if max_samples is not None and max_samples < len(labels):
            index = balanced_prefix(labels, max_samples)
            images, labels = images[index], labels[index]
        self.images, self.labels = images, labels
        self.targets = labels.tolist()
        self.transform = transform
        self.rgb = rgb

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        img = Image.fromarray(self.images[index], mode="L")
        if self.rgb:
            img = img.convert("RGB")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[index])


def balanced_prefix(labels: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """Indices of the first ``n`` samples taken round-robin over classes (stable, original order within a class)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    per_class = [np.flatnonzero(labels == c) for c in classes]
    order = []
    for rank in range(max(len(p) for p in per_class)):
        for p in per_class:
            if rank < len(p):
                order.append(p[rank])
            if len(order) == n:
                return np.sort(np.asarray(order))
    return np.sort(np.asarray(order))

