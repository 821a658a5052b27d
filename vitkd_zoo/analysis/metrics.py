"""The paper's diagnostics on token matrices: per-image SVD ranks, dataset PCA ranks and the SEP curve.

Definitions follow the authors' released analysis code (arXiv 2511.15572; see ``docs/analysis.md``):

- per-image SVD: ``X_i`` (tokens x channels) uncentered and unnormalised; ``c_k = sum_{j<=k} s_j^2 / sum_j s_j^2``;
  ``d_i(tau)`` = smallest k with ``c_k >= tau``; numerical rank = ``#(s > 1e-10)``.
- dataset PCA: ``C = (1 / N_tokens) sum_i X_i^T X_i`` (uncentered second moment), eigenvectors ``V`` by descending
  eigenvalue; ``E_i(d) = ||X_i V_d||_F^2 / ||X_i||_F^2``; ``d_i(tau)`` = first d with ``E_i(d) >= tau``.
- SEP: per token, the DFT along channels, ``e(k) = |X(k)|^2``, cumulative share over k (full: length C, natural
  order; folded: rFFT with conjugate bins doubled, length C//2 + 1), averaged over all tokens of all images;
  bandwidth ``b(tau) = d / len(curve)`` with d the first 1-based index where the mean curve reaches ``tau``.

Everything is batched over images and tokens (no Python loop over tokens), runs on the tensors' device and computes
in float64 so that ranks do not depend on the input precision. Thresholds are fractions in (0, 1], not percent.
The reported number is the 99th percentile over images (``summarize``), as in the paper.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch

__all__ = [
    "DEFAULT_THRESHOLDS", "DEFAULT_SEP_THRESHOLDS", "SEP_MODES",
    "first_reaching", "singular_values", "svd_energy_curves", "svd_energy_ranks", "numerical_rank",
    "SecondMoment", "pca_energy_curves", "pca_ranks", "dataset_pca_ranks",
    "token_sep_curves", "SEPAccumulator", "update_sep", "sep_curve", "sep_dims", "sep_bandwidth",
    "summarize", "summarize_ranks", "layerwise_summary", "threshold_key",
]

#: Energy thresholds of the paper's SVD / PCA tables.
DEFAULT_THRESHOLDS = (0.80, 0.90, 0.95, 0.99)
#: Energy thresholds of the paper's SEP bandwidth table.
DEFAULT_SEP_THRESHOLDS = (0.50, 0.60, 0.70, 0.80, 0.90)
SEP_MODES = ("full", "folded")

# Chunk sizes: small enough to stay in cache (measured fastest on CPU), large enough to batch the GPU.
_CHUNK_IMAGES = 16  # images per float64 per-image Gram chunk
_CHUNK_PROJECT = 4  # images per float64 PCA projection chunk
_CHUNK_ROWS = 1024  # token rows per float64 second-moment block
_CHUNK_TOKENS = 1024  # tokens per FFT chunk


def threshold_key(tau: float) -> str:
    """JSON key for a threshold: ``0.99 -> "0.99"``, ``0.8 -> "0.8"``."""
    return f"{float(tau):g}"


def _as_tokens(tokens: torch.Tensor, name: str = "tokens") -> torch.Tensor:
    if not torch.is_tensor(tokens):
        raise TypeError(f"{name} must be a torch.Tensor [N_images, T, C], got {type(tokens).__name__}")
    if tokens.ndim != 3:
        raise ValueError(f"{name} must have shape [N_images, T, C], got {tuple(tokens.shape)}")
    if tokens.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tokens.shape)}): nothing to analyse")
    if tokens.is_complex():
        raise TypeError(f"{name} must be real, got {tokens.dtype}")
    return tokens


def _as_thresholds(thresholds: Sequence[float] | float, device) -> torch.Tensor:
    values = [float(thresholds)] if isinstance(thresholds, (int, float)) else [float(t) for t in thresholds]
    if not values:
        raise ValueError("thresholds is empty; pass e.g. (0.8, 0.9, 0.95, 0.99)")
    bad = [t for t in values if not 0.0 < t <= 1.0 or math.isnan(t)]
    if bad:
        raise ValueError(f"thresholds are energy fractions in (0, 1] (0.99, not 99); got {bad}")
    return torch.tensor(values, dtype=torch.float64, device=device)


def first_reaching(curves: torch.Tensor, thresholds: Sequence[float] | float) -> torch.Tensor:
    """Smallest 1-based index where each non-decreasing curve reaches each threshold.

    ``curves [..., L]`` -> int64 ``[..., K]``. A curve that never reaches a threshold (rounding just below 1.0)
    gives L, like the authors' ``dims_for_threshold``.
    """
    thr = _as_thresholds(thresholds, curves.device)
    hit = curves.to(torch.float64).unsqueeze(-2) >= thr.unsqueeze(-1)  # [..., K, L]
    reached = hit.any(dim=-1)
    index = hit.to(torch.uint8).argmax(dim=-1) + 1
    return torch.where(reached, index, torch.full_like(index, curves.shape[-1]))


def _check_energy(total: torch.Tensor, what: str) -> None:
    if bool((total <= 0).any()):
        bad = torch.nonzero(total.reshape(-1) <= 0).reshape(-1)[:5].tolist()
        raise ValueError(f"{what} {bad} have zero energy (all-zero tokens): their energy shares are undefined")


# ---------------------------------------------------------------------------------------------------------------
# Per-image SVD
# ---------------------------------------------------------------------------------------------------------------

def singular_values(tokens: torch.Tensor, *, chunk_size: int = _CHUNK_IMAGES) -> torch.Tensor:
    """Singular values of each image's token matrix, float64, descending: ``[N, T, C] -> [N, min(T, C)]``."""
    tokens = _as_tokens(tokens)
    return torch.cat([torch.linalg.svdvals(part.to(torch.float64)) for part in tokens.split(chunk_size)])


def _sigma_squared(x: torch.Tensor) -> torch.Tensor:
    """sigma^2 of each ``[T, C]`` matrix, descending, as the eigenvalues of the smaller float64 Gram matrix.

    Same numbers as ``svdvals(x) ** 2`` to ~1e-13 of the image's energy, about 2x faster than ``svdvals`` on CPU
    and 5-6x faster than the authors' per-image ``np.linalg.svd`` (``benchmarks/analysis.py``).
    """
    x = x.to(torch.float64)
    gram = x @ x.mT if x.shape[-2] <= x.shape[-1] else x.mT @ x
    return torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0)


# Bound on the eigenvalue error of the float64 Gram route, relative to the image's energy (forming X X^T and the
# symmetric eigensolver each contribute <= n * eps * ||X||_F^2 ~ 1e-13 for n <= 400; 1e-12 leaves headroom).
_GRAM_REL_ERROR = 1e-12


def _rank_above(x: torch.Tensor, energy: torch.Tensor, tol: float) -> torch.Tensor:
    """``#(sigma > tol)`` from Gram eigenvalues; images with an eigenvalue too close to ``tol^2`` to decide
    (exactly rank-deficient inputs) are recomputed with ``svdvals``."""
    bound = _GRAM_REL_ERROR * energy.sum(dim=-1, keepdim=True)
    rank = (energy > tol * tol + bound).sum(dim=-1)
    unsure = ((energy - tol * tol).abs() <= bound).any(dim=-1)
    if bool(unsure.any()):
        rank[unsure] = (torch.linalg.svdvals(x[unsure].to(torch.float64)) > tol).sum(dim=-1)
    return rank


def _svd_ranks_chunk(x: torch.Tensor, thresholds: Sequence[float], tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Energy ranks and numerical rank of a chunk of images from one eigen-decomposition."""
    energy = _sigma_squared(x)
    total = energy.sum(dim=-1, keepdim=True)
    _check_energy(total, "images")
    return first_reaching(energy.cumsum(dim=-1) / total, thresholds), _rank_above(x, energy, tol)


def svd_energy_curves(tokens: torch.Tensor, *, chunk_size: int = _CHUNK_IMAGES) -> torch.Tensor:
    """Per-image cumulative sigma^2 share ``c_k`` (uncentered): ``[N, T, C] -> [N, min(T, C)]`` float64."""
    tokens = _as_tokens(tokens)
    out = []
    for part in tokens.split(chunk_size):
        energy = _sigma_squared(part)
        total = energy.sum(dim=-1, keepdim=True)
        _check_energy(total, "images")
        out.append(energy.cumsum(dim=-1) / total)
    return torch.cat(out)


def svd_energy_ranks(
        tokens: torch.Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, *, chunk_size: int = _CHUNK_IMAGES,
) -> torch.Tensor:
    """For each image, the smallest k whose cumulative sigma^2 share reaches each threshold.

    Args:
        tokens: ``[N_images, T, C]`` token matrices (raw, uncentered; any float dtype, any device).
        thresholds: energy fractions in (0, 1].

    Returns:
        int64 ``[N_images, len(thresholds)]`` on ``tokens.device``.

    Example:
        >>> x = torch.randn(8, 196, 384)
        >>> svd_energy_ranks(x, (0.9, 0.99)).shape
        torch.Size([8, 2])
    """
    _as_thresholds(thresholds, "cpu")
    return first_reaching(svd_energy_curves(tokens, chunk_size=chunk_size), thresholds)


def numerical_rank(tokens: torch.Tensor, tol: float = 1e-10, *, chunk_size: int = _CHUNK_IMAGES) -> torch.Tensor:
    """``#(sigma > tol)`` per image (the authors' absolute tolerance 1e-10), int64 ``[N_images]``."""
    tokens = _as_tokens(tokens)
    return torch.cat([_rank_above(part, _sigma_squared(part), tol) for part in tokens.split(chunk_size)])


# ---------------------------------------------------------------------------------------------------------------
# Dataset-level PCA
# ---------------------------------------------------------------------------------------------------------------

class SecondMoment:
    """Streaming ``sum X^T X`` and ``sum x`` over tokens (float64, C x C), for the dataset-level PCA basis.

    Feed it token batches of any size (``[N, T, C]`` or ``[M, C]``); the result does not depend on how the
    tokens were split. ``basis()`` gives the eigenvalues (descending) and eigenvectors (columns) of the
    uncentered second moment ``C = sum X^T X / N_tokens``, or of the covariance with ``center=True``.
    """

    def __init__(self) -> None:
        self.gram: torch.Tensor | None = None
        self.sum: torch.Tensor | None = None
        self.count = 0

    @property
    def channels(self) -> int | None:
        return None if self.gram is None else self.gram.shape[0]

    def update(self, tokens: torch.Tensor) -> SecondMoment:
        flat = tokens.reshape(-1, tokens.shape[-1])
        if flat.shape[0] == 0:
            return self
        if self.gram is None:
            c = flat.shape[1]
            self.gram = torch.zeros(c, c, dtype=torch.float64, device=flat.device)
            self.sum = torch.zeros(c, dtype=torch.float64, device=flat.device)
        elif flat.shape[1] != self.gram.shape[0]:
            raise ValueError(f"token width changed: accumulated C={self.gram.shape[0]}, got C={flat.shape[1]}")
        for part in flat.split(_CHUNK_ROWS):  # float64 row blocks that stay in cache
            part = part.to(device=self.gram.device, dtype=torch.float64)
            self.gram += part.T @ part
            self.sum += part.sum(dim=0)
        self.count += flat.shape[0]
        return self

    def mean(self) -> torch.Tensor:
        self._check()
        return self.sum / self.count

    def matrix(self, center: bool = False) -> torch.Tensor:
        self._check()
        moment = self.gram / self.count
        if center:
            mu = self.mean()
            moment = moment - torch.outer(mu, mu)
        return moment

    def basis(self, center: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(eigenvalues [C] descending, eigenvectors [C, C] as columns)``."""
        eigvals, eigvecs = torch.linalg.eigh(self.matrix(center))
        return eigvals.flip(0), eigvecs.flip(1)

    def _check(self) -> None:
        if self.count == 0:
            raise ValueError("SecondMoment has seen no tokens: call update() with token batches first")


def pca_energy_curves(
        tokens: torch.Tensor, basis: torch.Tensor, mean: torch.Tensor | None = None, *,
        chunk_size: int = _CHUNK_PROJECT,
) -> torch.Tensor:
    """``E_i(d) = ||(X_i - mean) V_d||_F^2 / ||X_i - mean||_F^2`` for d = 1..C: ``[N, T, C] -> [N, C]`` float64."""
    tokens = _as_tokens(tokens)
    basis = basis.to(device=tokens.device, dtype=torch.float64)
    out = []
    for part in tokens.split(chunk_size):
        x = part.to(torch.float64)
        if mean is not None:
            x = x - mean.to(device=x.device, dtype=torch.float64)
        energy = (x @ basis).square().sum(dim=1)  # [n, C]: energy along each basis vector
        total = x.square().sum(dim=(1, 2)).unsqueeze(-1)
        _check_energy(total, "images")
        out.append(energy.cumsum(dim=-1) / total)
    return torch.cat(out)


def pca_ranks(
        tokens: torch.Tensor, basis: torch.Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        mean: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-image ranks under a given shared basis (columns by descending eigenvalue): int64 ``[N, K]``."""
    return first_reaching(pca_energy_curves(tokens, basis, mean), thresholds)


def dataset_pca_ranks(
        tokens: torch.Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, center: bool = False,
) -> torch.Tensor:
    """Per image, the smallest d whose energy in the dataset's top-d PCA subspace reaches each threshold.

    The basis is the eigenbasis of the second moment over all tokens of all images in ``tokens`` (uncentered
    unless ``center=True``; centered also subtracts the mean token before projecting, as the authors' flag does).
    For data that does not fit in memory, stream ``SecondMoment.update`` then call ``pca_ranks`` per batch.

    Returns:
        int64 ``[N_images, len(thresholds)]``.
    """
    tokens = _as_tokens(tokens)
    acc = SecondMoment().update(tokens)
    _, basis = acc.basis(center)
    return pca_ranks(tokens, basis, thresholds, acc.mean() if center else None)


def _global_dims(eigvals: torch.Tensor, thresholds: Sequence[float]) -> torch.Tensor:
    """Components of the dataset spectrum itself needed for each threshold (the authors' "global d")."""
    share = eigvals.clamp_min(0).cumsum(0) / eigvals.clamp_min(0).sum()
    return first_reaching(share, thresholds)


# ---------------------------------------------------------------------------------------------------------------
# SEP: spectral energy pattern along channels
# ---------------------------------------------------------------------------------------------------------------

def _check_mode(mode: str) -> None:
    if mode not in SEP_MODES:
        raise ValueError(f"SEP mode must be one of {SEP_MODES}, got {mode!r}")


def _fold_weights(length: int, channels: int, device) -> torch.Tensor:
    """2 for rFFT bins with a conjugate partner (0 < k, 2k != C), else 1."""
    k = torch.arange(length, device=device)
    return torch.where((k > 0) & (2 * k != channels), 2.0, 1.0).to(torch.float64)


def _normalised_power(tokens: torch.Tensor) -> torch.Tensor:
    """``|rfft(x)|^2 / ||x||^2`` along channels in float64: ``[..., C] -> [..., C//2 + 1]``."""
    spectrum = torch.fft.rfft(tokens.to(torch.float64), dim=-1)
    power = spectrum.real.square() + spectrum.imag.square()
    total = power @ _fold_weights(power.shape[-1], tokens.shape[-1], power.device)  # Parseval: the token's energy
    _check_energy(total, "tokens")
    return power / total.unsqueeze(-1)


def _curves_from_power(power: torch.Tensor, mode: str, channels: int) -> torch.Tensor:
    """Per-token cumulative share from normalised rFFT power. A real signal's full spectrum mirrors its rFFT
    (``e(C - k) = e(k)``), so both modes come from one rFFT."""
    if mode == "full":
        energy = torch.cat([power, power[..., 1:channels - power.shape[-1] + 1].flip(-1)], dim=-1)
    else:
        energy = power * _fold_weights(power.shape[-1], channels, power.device)
    return energy.cumsum_(dim=-1)


def token_sep_curves(tokens: torch.Tensor, mode: str = "full") -> torch.Tensor:
    """Per-token cumulative spectral energy share along channels: ``[..., C] -> [..., L]`` float64.

    full: ``|fft(x)|^2`` in natural order k = 0..C-1 (L = C). folded: ``|rfft(x)|^2`` with every bin that has a
    conjugate partner (0 < k, 2k != C) doubled (L = C//2 + 1); both keep the token's total energy (Parseval).
    """
    _check_mode(mode)
    return _curves_from_power(_normalised_power(tokens), mode, tokens.shape[-1])


class SEPAccumulator:
    """Streaming mean and standard deviation (over tokens) of the per-token SEP curve."""

    def __init__(self, mode: str = "full", *, chunk_tokens: int = _CHUNK_TOKENS) -> None:
        _check_mode(mode)
        self.mode = mode
        self.chunk_tokens = chunk_tokens
        self.sum: torch.Tensor | None = None
        self.sumsq: torch.Tensor | None = None
        self.count = 0

    def update(self, tokens: torch.Tensor) -> SEPAccumulator:
        flat = tokens.reshape(-1, tokens.shape[-1])
        for part in flat.split(self.chunk_tokens):
            self._add(token_sep_curves(part, self.mode))
        return self

    def _add(self, curves: torch.Tensor) -> None:
        if self.sum is None:
            self.sum = torch.zeros(curves.shape[-1], dtype=torch.float64, device=curves.device)
            self.sumsq = torch.zeros_like(self.sum)
        elif curves.shape[-1] != self.sum.shape[0]:
            raise ValueError(f"token width changed: curve length {self.sum.shape[0]} vs {curves.shape[-1]}")
        self.sum += curves.sum(dim=0)
        self.sumsq += curves.square_().sum(dim=0)  # curves is a temporary: square in place
        self.count += curves.shape[0]

    def mean(self) -> torch.Tensor:
        if self.count == 0:
            raise ValueError("SEPAccumulator has seen no tokens: call update() first")
        return self.sum / self.count

    def std(self) -> torch.Tensor:
        """Population standard deviation over tokens (numpy's default ddof=0)."""
        mean = self.mean()
        return (self.sumsq / self.count - mean.square()).clamp_min(0).sqrt()


def update_sep(accumulators: Sequence[SEPAccumulator], tokens: torch.Tensor, chunk_tokens: int = _CHUNK_TOKENS) -> None:
    """Feed several SEP accumulators (e.g. full and folded) from one rFFT per token chunk."""
    flat = tokens.reshape(-1, tokens.shape[-1])
    for part in flat.split(chunk_tokens):
        power = _normalised_power(part)
        for acc in accumulators:
            acc._add(_curves_from_power(power, acc.mode, flat.shape[-1]))


def sep_curve(tokens: torch.Tensor, mode: str = "full", *, chunk_tokens: int = _CHUNK_TOKENS) -> torch.Tensor:
    """Mean over all tokens of the per-token cumulative spectral energy share along channels.

    Args:
        tokens: ``[N_images, T, C]`` (or any ``[..., C]``): raw tokens, no centering or channel reordering.
        mode: ``"full"`` (the authors' released numbers; length C) or ``"folded"`` (length C//2 + 1).

    Returns:
        float64 ``[L]`` with fractions in [0, 1]; the last entry is 1.
    """
    if tokens.numel() == 0:
        raise ValueError(f"tokens is empty (shape {tuple(tokens.shape)}): nothing to analyse")
    return SEPAccumulator(mode, chunk_tokens=chunk_tokens).update(tokens).mean()


def sep_dims(curve: torch.Tensor, thresholds: Sequence[float] = DEFAULT_SEP_THRESHOLDS) -> torch.Tensor:
    """First 1-based index where the mean SEP curve reaches each threshold: int64 ``[K]``."""
    if curve.ndim != 1 or curve.numel() == 0:
        raise ValueError(f"curve must be a non-empty 1-D SEP curve, got shape {tuple(curve.shape)}")
    return first_reaching(curve, thresholds)


def sep_bandwidth(curve: torch.Tensor, thresholds: Sequence[float] = DEFAULT_SEP_THRESHOLDS) -> torch.Tensor:
    """Normalised bandwidth ``d / len(curve)`` per threshold (d / C for full, d / (C//2 + 1) folded): float64 ``[K]``.

    White-noise tokens give ``b(tau) ~ tau``; the paper reports ``b(tau) ~ tau`` for every ViT it measured.
    """
    return sep_dims(curve, thresholds).to(torch.float64) / curve.shape[-1]


# ---------------------------------------------------------------------------------------------------------------
# Summaries
# ---------------------------------------------------------------------------------------------------------------

def summarize(values: torch.Tensor, percentiles: Sequence[float] = (99,)) -> dict[str, float]:
    """``p<q>`` percentiles (linear interpolation, numpy's default), mean, median, std (ddof 0), min, max."""
    v = torch.as_tensor(values).reshape(-1).to(torch.float64)
    if v.numel() == 0:
        raise ValueError("cannot summarise an empty set of values")
    out = {f"p{q:g}": float(torch.quantile(v, float(q) / 100.0)) for q in percentiles}
    out.update(
        mean=float(v.mean()), median=float(torch.quantile(v, 0.5)), std=float(v.std(correction=0)),
        min=float(v.min()), max=float(v.max()),
    )
    return out


def summarize_ranks(
        ranks: torch.Tensor, thresholds: Sequence[float] = DEFAULT_THRESHOLDS, percentiles: Sequence[float] = (99,),
) -> dict[str, dict[str, float]]:
    """``{"0.99": {"p99": ..., "mean": ..., ...}, ...}`` for ``[N_images, K]`` ranks."""
    if ranks.ndim != 2 or ranks.shape[1] != len(thresholds):
        raise ValueError(f"ranks must be [N_images, {len(thresholds)}], got {tuple(ranks.shape)}")
    return {threshold_key(t): summarize(ranks[:, i], percentiles) for i, t in enumerate(thresholds)}


def layerwise_summary(ranks_by_layer: Mapping[int, torch.Tensor]) -> dict[int, dict[str, float]]:
    """Per layer: mean, std, median, p25, p75, p99 of per-image ranks (the paper's layer-wise plot uses tau 0.99)."""
    return {layer: summarize(r, percentiles=(25, 75, 99)) for layer, r in ranks_by_layer.items()}
