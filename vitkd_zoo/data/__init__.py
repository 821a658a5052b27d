"""Built-in datasets."""
from .fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    FashionMNIST,
    balanced_prefix,
    find_fashion_mnist,
    load_fashion_mnist,
)

__all__ = [
    "FASHION_MNIST_CLASSES", "FASHION_MNIST_MEAN", "FASHION_MNIST_STD", "FashionMNIST", "balanced_prefix",
    "find_fashion_mnist", "load_fashion_mnist",
]
