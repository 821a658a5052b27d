"""The paper's feature diagnostics (arXiv 2511.15572) for any timm ViT-family model or vitkd_zoo student.

Per-image SVD ranks, dataset-level PCA ranks and the spectral energy pattern (SEP) of the raw block outputs, with
the authors' exact definitions (``docs/analysis.md``), batched on CPU or GPU, streamed over the data, plus plots
and the ``vitkd-zoo analyze`` command.

Example:
    >>> import torch
    >>> from vitkd_zoo.analysis import svd_energy_ranks, sep_curve, sep_bandwidth
    >>> tokens = torch.randn(10, 196, 384)           # [N_images, T, C]
    >>> svd_energy_ranks(tokens, (0.9, 0.99)).shape   # per-image smallest k reaching 90 % / 99 % energy
    torch.Size([10, 2])
    >>> b = sep_bandwidth(sep_curve(tokens), (0.5, 0.9))  # white noise: b(tau) ~ tau, about [0.50, 0.90]
"""
from .analyze import analyze_model, analyze_tokens
from .features import (
    AnalysisError,
    EmptyDataError,
    LayerIndexError,
    NoTokensError,
    build_dataset,
    eval_transform,
    extract_tokens,
    iter_tokens,
    make_loader,
    model_input_size,
    num_token_layers,
    resolve_layers,
    select_fashion_mnist,
    select_image_files,
)
from .metrics import (
    DEFAULT_SEP_THRESHOLDS,
    DEFAULT_THRESHOLDS,
    SecondMoment,
    SEPAccumulator,
    dataset_pca_ranks,
    first_reaching,
    layerwise_summary,
    numerical_rank,
    pca_energy_curves,
    pca_ranks,
    sep_bandwidth,
    sep_curve,
    sep_dims,
    singular_values,
    summarize,
    summarize_ranks,
    svd_energy_curves,
    svd_energy_ranks,
    token_sep_curves,
)

__all__ = [
    "svd_energy_ranks", "svd_energy_curves", "singular_values", "numerical_rank",
    "dataset_pca_ranks", "pca_ranks", "pca_energy_curves", "SecondMoment",
    "sep_curve", "sep_bandwidth", "sep_dims", "token_sep_curves", "SEPAccumulator", "first_reaching",
    "summarize", "summarize_ranks", "layerwise_summary", "DEFAULT_THRESHOLDS", "DEFAULT_SEP_THRESHOLDS",
    "analyze_model", "analyze_tokens",
    "extract_tokens", "iter_tokens", "num_token_layers", "resolve_layers", "model_input_size", "eval_transform",
    "build_dataset", "make_loader", "select_image_files", "select_fashion_mnist",
    "AnalysisError", "EmptyDataError", "LayerIndexError", "NoTokensError",
]
