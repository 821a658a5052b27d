"""One streamed pass over the data computing every diagnostic for every selected layer.

Per batch and layer: per-image SVD ranks (all thresholds) and numerical rank, the C x C second moment, and both SEP
accumulators. Dataset PCA needs the basis before it can project, so the tokens of the PCA layers are kept on the
CPU while they fit in ``cache_bytes`` (the paper's setup: 1,000 x 196 x 384 float32 = 301 MB for the last layer);
beyond that the data is read a second time instead. Nothing else is kept, so 1,000 images x 24 layers never sit
in memory at once.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
import torch.nn as nn

from .features import EmptyDataError, LayerIndexError, LayerSpec, iter_tokens, num_token_layers, resolve_layers
from .metrics import (
    _CHUNK_IMAGES,
    DEFAULT_SEP_THRESHOLDS,
    DEFAULT_THRESHOLDS,
    SEP_MODES,
    SecondMoment,
    SEPAccumulator,
    _global_dims,
    _svd_ranks_chunk,
    first_reaching,
    pca_energy_curves,
    sep_bandwidth,
    sep_dims,
    summarize,
    summarize_ranks,
    threshold_key,
    update_sep,
)

__all__ = ["analyze_model", "analyze_tokens", "LayerAnalysis"]


def _keyed(thresholds: Sequence[float], values: torch.Tensor) -> dict:
    return dict(zip(map(threshold_key, thresholds), values.tolist(), strict=True))


class LayerAnalysis:
    """Streaming state for one layer; ``update`` per batch, ``result`` at the end."""

    def __init__(self, thresholds: Sequence[float], sep_thresholds: Sequence[float], pca: bool, center: bool,
                 percentiles: Sequence[float], rank_tol: float = 1e-10):
        self.thresholds, self.sep_thresholds = tuple(thresholds), tuple(sep_thresholds)
        # the 99th percentile is the paper's headline number (and what the plots draw): always computed
        self.percentiles = tuple(sorted({99.0, *map(float, percentiles)}))
        self.pca, self.center, self.rank_tol = pca, center, rank_tol
        self.svd_ranks: list[torch.Tensor] = []
        self.num_rank: list[torch.Tensor] = []
        self.moment = SecondMoment()
        self.sep = {mode: SEPAccumulator(mode) for mode in SEP_MODES}
        self.pca_ranks: list[torch.Tensor] = []
        self.tokens_per_image: int | None = None
        self.channels: int | None = None
        self.basis: tuple[torch.Tensor, torch.Tensor] | None = None

    def update(self, tokens: torch.Tensor) -> None:
        if self.channels is None:
            self.tokens_per_image, self.channels = tokens.shape[1], tokens.shape[2]
        elif tokens.shape[1:] != (self.tokens_per_image, self.channels):
            raise ValueError(f"token shape changed between batches: {tuple(tokens.shape[1:])} vs "
                             f"{(self.tokens_per_image, self.channels)} (images of different sizes?)")
        for part in tokens.split(_CHUNK_IMAGES):
            ranks, num_rank = _svd_ranks_chunk(part, self.thresholds, self.rank_tol)
            self.svd_ranks.append(ranks.cpu())
            self.num_rank.append(num_rank.cpu())
        update_sep(list(self.sep.values()), tokens)
        if self.pca:
            self.moment.update(tokens)

    def finish_moment(self) -> None:
        if self.pca and self.basis is None:
            self.basis = self.moment.basis(self.center)

    def update_pca(self, tokens: torch.Tensor) -> None:
        eigvals, eigvecs = self.basis
        mean = self.moment.mean() if self.center else None
        curves = pca_energy_curves(tokens.to(eigvecs.device), eigvecs, mean)
        self.pca_ranks.append(first_reaching(curves, self.thresholds).cpu())

    def result(self, keep_per_image: bool = True) -> dict:
        svd = torch.cat(self.svd_ranks)
        out: dict = {
            "tokens_per_image": self.tokens_per_image,
            "channels": self.channels,
            "svd": {"summary": summarize_ranks(svd, self.thresholds, self.percentiles)},
            "numerical_rank": {"tol": self.rank_tol, "summary": summarize(torch.cat(self.num_rank), self.percentiles)},
        }
        top = max(range(len(self.thresholds)), key=lambda i: self.thresholds[i])
        out["svd"]["layerwise"] = summarize(svd[:, top], percentiles=sorted({25, 75, *self.percentiles}))
        if keep_per_image:
            out["svd"]["ranks"] = svd.tolist()
            out["numerical_rank"]["values"] = torch.cat(self.num_rank).tolist()
        if self.pca:
            pca = torch.cat(self.pca_ranks)
            eigvals = self.basis[0].cpu()
            out["pca"] = {
                "center": self.center,
                "summary": summarize_ranks(pca, self.thresholds, self.percentiles),
                "global_dims": _keyed(self.thresholds, _global_dims(eigvals, self.thresholds)),
                "eigenvalues": eigvals.tolist(),
            }
            if keep_per_image:
                out["pca"]["ranks"] = pca.tolist()
        out["sep"] = {}
        for mode, acc in self.sep.items():
            curve = acc.mean().cpu()
            out["sep"][mode] = {
                "length": int(curve.numel()),
                "dims": _keyed(self.sep_thresholds, sep_dims(curve, self.sep_thresholds)),
                "bandwidth": _keyed(self.sep_thresholds, sep_bandwidth(curve, self.sep_thresholds)),
                "curve": curve.tolist(),
                "std": acc.std().cpu().tolist(),
            }
        return out


def _run(
        token_batches_factory, layer_ids: list[int], *, thresholds, sep_thresholds, pca_layers, center, percentiles,
        cache_bytes: int, keep_per_image: bool,
) -> tuple[dict, int]:
    states = {layer: LayerAnalysis(thresholds, sep_thresholds, layer in pca_layers, center, percentiles)
              for layer in layer_ids}
    cache: dict[int, list[torch.Tensor]] | None = {layer: [] for layer in pca_layers}
    cached = 0
    num_images = 0
    for out in token_batches_factory("extracting tokens"):
        num_images += next(iter(out.values())).shape[0]
        for layer, tokens in out.items():
            states[layer].update(tokens)
            if cache is not None and layer in cache:
                cached += tokens.numel() * tokens.element_size()
                if cached > cache_bytes:
                    cache = None  # too big: read the data again for the projection instead
                else:
                    cache[layer].append(tokens.cpu())
    if num_images == 0:
        raise EmptyDataError("no images to analyse")
    if pca_layers:
        for layer in pca_layers:
            states[layer].finish_moment()
        if cache is not None:
            for layer, parts in cache.items():
                for tokens in parts:
                    states[layer].update_pca(tokens)
        else:
            for out in token_batches_factory("re-reading for PCA", pca_layers):
                for layer in pca_layers:
                    states[layer].update_pca(out[layer])
    per_layer = {str(layer): state.result(keep_per_image) for layer, state in states.items()}
    return per_layer, num_images


def _assemble(per_layer: dict, layer_ids: list[int], num_layers: int, num_images: int, thresholds, sep_thresholds,
              percentiles, pca_layers, passes: int) -> dict:
    last = str(layer_ids[-1])
    result = {
        "num_images": num_images,
        "num_layers": num_layers,
        "layers": layer_ids,
        "last_layer": layer_ids[-1],
        "tokens_per_image": per_layer[last]["tokens_per_image"],
        "channels": per_layer[last]["channels"],
        "thresholds": list(thresholds),
        "sep_thresholds": list(sep_thresholds),
        "percentiles": list(percentiles),
        "pca_layers": sorted(pca_layers),
        "passes": passes,
        "per_layer": per_layer,
    }
    # The paper's layer-wise view: per-image SVD rank at the top threshold (0.99), per block.
    result["layerwise"] = {
        str(layer): {"channels": per_layer[str(layer)]["channels"], "threshold": max(thresholds),
                     **per_layer[str(layer)]["svd"]["layerwise"]}
        for layer in layer_ids
    }
    return result


def _pca_layer_ids(pca_layers: str | Sequence[int] | None, layer_ids: list[int]) -> list[int]:
    if pca_layers in (None, "none", False):
        return []
    if pca_layers == "last":
        return [layer_ids[-1]]
    if pca_layers == "all":
        return list(layer_ids)
    chosen = sorted(set(int(v) for v in pca_layers))
    missing = [v for v in chosen if v not in layer_ids]
    if missing:
        raise LayerIndexError(f"pca_layers {missing} are not among the analysed layers {layer_ids}; add them to "
                              "`layers` or use pca_layers='last' / 'all'")
    return chosen


def analyze_model(
        model: nn.Module,
        data: Iterable,
        *,
        layers: LayerSpec = "last",
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        sep_thresholds: Sequence[float] = DEFAULT_SEP_THRESHOLDS,
        percentiles: Sequence[float] = (99,),
        pca_layers: str | Sequence[int] | None = "last",
        center: bool = False,
        norm: bool = False,
        device: torch.device | str | None = None,
        cache_bytes: int = 2 << 30,
        keep_per_image: bool = True,
        progress: bool = False,
) -> dict:
    """All diagnostics for ``model`` on ``data``, streamed batch by batch.

    Args:
        model: a timm ViT-family model or vitkd_zoo student (anything with ``forward_intermediates`` returning
            tokens).
        data: a re-iterable of preprocessed image batches ``[B, C, H, W]`` or ``(images, labels)`` (a DataLoader,
            a list of tensors), or one ``[N, C, H, W]`` tensor. Read once, or twice when the PCA layers' tokens
            exceed ``cache_bytes``. The model is put in eval mode and moved to ``device``.
        layers: ``"last"``, ``"all"``, ``"i,j"`` or indices (negative from the end).
        pca_layers: ``"last"`` (the paper: dataset PCA on the last analysed layer), ``"all"``, indices or None.
        center: dataset PCA on the centered covariance instead of the uncentered second moment.
        norm: apply the model's final norm to the taps (off: the paper's raw residual stream).

    Returns:
        a JSON-ready dict: ``per_layer[str(layer)]`` with ``svd`` / ``numerical_rank`` / ``pca`` / ``sep`` results
        (summaries with ``p99``, ``mean``, ``median``, ``std``; per-image ranks; SEP curves, dims, bandwidths),
        ``layerwise`` (tau = max(thresholds) summary per layer) and run facts.

    Raises:
        LayerIndexError, NoTokensError, EmptyDataError (all ``AnalysisError``, a ``ValueError``).
    """
    num_layers = num_token_layers(model)
    layer_ids = resolve_layers(layers, num_layers)
    pca_ids = _pca_layer_ids(pca_layers, layer_ids)
    if torch.is_tensor(data):  # one preprocessed [N, C, H, W] tensor
        if data.ndim != 4 or data.shape[0] == 0:
            raise EmptyDataError(f"expected a non-empty [N, C, H, W] image tensor, got shape {tuple(data.shape)}")
        data = list(data.split(64))
    total = len(data) if hasattr(data, "__len__") else None
    passes = [0]

    def factory(desc: str, which: list[int] | None = None):
        passes[0] += 1
        if passes[0] == 2 and iter(data) is data:
            raise ValueError("the PCA layers' tokens exceed cache_bytes and `data` is a one-shot iterator: pass a "
                             "DataLoader or list, or raise cache_bytes")
        return iter_tokens(model, data, which or layer_ids, device=device, norm=norm, progress=progress,
                           total=total, desc=desc)

    per_layer, num_images = _run(factory, layer_ids, thresholds=thresholds, sep_thresholds=sep_thresholds,
                                 pca_layers=pca_ids, center=center, percentiles=percentiles,
                                 cache_bytes=cache_bytes, keep_per_image=keep_per_image)
    return _assemble(per_layer, layer_ids, num_layers, num_images, thresholds, sep_thresholds, percentiles, pca_ids,
                     passes[0])


def analyze_tokens(
        tokens_by_layer: dict[int, torch.Tensor],
        *,
        thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
        sep_thresholds: Sequence[float] = DEFAULT_SEP_THRESHOLDS,
        percentiles: Sequence[float] = (99,),
        pca_layers: str | Sequence[int] | None = "last",
        center: bool = False,
        batch_size: int = 256,
        keep_per_image: bool = True,
) -> dict:
    """The same result as ``analyze_model`` for tokens already extracted: ``{layer: [N, T, C]}``."""
    if not tokens_by_layer:
        raise EmptyDataError("no layers given")
    layer_ids = sorted(tokens_by_layer)
    sizes = {t.shape[0] for t in tokens_by_layer.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise EmptyDataError(f"every layer needs the same, non-zero number of images; got {sorted(sizes)}")
    pca_ids = _pca_layer_ids(pca_layers, layer_ids)

    def factory(desc: str, which: list[int] | None = None):
        n = sizes.copy().pop()
        for start in range(0, n, batch_size):
            yield {layer: tokens_by_layer[layer][start:start + batch_size] for layer in (which or layer_ids)}

    per_layer, num_images = _run(factory, layer_ids, thresholds=thresholds, sep_thresholds=sep_thresholds,
                                 pca_layers=pca_ids, center=center, percentiles=percentiles, cache_bytes=1 << 62,
                                 keep_per_image=keep_per_image)
    return _assemble(per_layer, layer_ids, max(layer_ids) + 1, num_images, thresholds, sep_thresholds, percentiles,
                     pca_ids, 1)
