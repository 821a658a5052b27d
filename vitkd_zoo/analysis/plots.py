"""The figures a person wants from an analysis run, from ``analyze_model`` results (one model or a comparison).

Uses matplotlib's object API with the Agg canvas directly (no pyplot, no global backend switch), so it is safe in
servers, tests and notebooks alike. Every function takes a list of ``{"name": str, **analyze_model(...)}`` dicts
and writes one PNG.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["plot_rank_histograms", "plot_rank_vs_layer", "plot_sep_curves", "plot_svd_vs_pca", "write_plots"]

_COLORS = tuple(f"C{i}" for i in range(10))  # matplotlib's default cycle (tab10)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _label(model: dict) -> str:
    return model.get("label") or model.get("name", "model")


def _last(model: dict) -> dict:
    return model["per_layer"][str(model["last_layer"])]


def _title(model: dict) -> str:
    return f"{_label(model)} (block {model['last_layer']}, C={model['channels']})"


def plot_rank_histograms(models: Sequence[dict], path: str | os.PathLike) -> Path:
    """Per-image SVD ranks at the last analysed layer, one panel per threshold, with the 99th-percentile line
    (the paper's headline number) and, where computed, the dataset-PCA ranks for contrast."""
    thresholds = models[0]["thresholds"]
    fig = _figure(3.2 * len(thresholds), 2.8 * len(models))
    axes = np.atleast_2d(fig.subplots(len(models), len(thresholds), squeeze=False))
    for row, model in enumerate(models):
        layer = _last(model)
        svd = np.asarray(layer["svd"]["ranks"])
        pca = np.asarray(layer["pca"]["ranks"]) if "pca" in layer and "ranks" in layer["pca"] else None
        for col, tau in enumerate(thresholds):
            ax = axes[row, col]
            key = f"{tau:g}"
            top = max(svd[:, col].max(), pca[:, col].max() if pca is not None else 0)
            bins = np.arange(0.5, top + 1.5, max(1, int(np.ceil(top / 40))))
            ax.hist(svd[:, col], bins=bins, color=_COLORS[0], alpha=0.75, label="per-image SVD")
            if pca is not None:
                ax.hist(pca[:, col], bins=bins, color=_COLORS[1], alpha=0.5, label="dataset PCA")
            p99 = layer["svd"]["summary"][key]["p99"]
            ax.axvline(p99, color="black", linestyle="--", linewidth=1.5, label=f"SVD 99th pct: {p99:.0f}")
            ax.set_title(f"{tau:.0%} energy", fontsize=10)
            ax.set_xlabel("dims needed")
            if col == 0:
                ax.set_ylabel(f"{_label(model)}\nimages")
            ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    fig.suptitle("Dims needed per image (last analysed block; " + ", ".join(_title(m) for m in models) + ")",
                 fontsize=10)
    return _save(fig, path)


def plot_rank_vs_layer(models: Sequence[dict], path: str | os.PathLike) -> Path:
    """Per-image SVD rank at the top threshold vs block: mean +- std, 25-75th percentile band, 99th percentile;
    right panel as a fraction of each block's width (models of different widths stay comparable)."""
    tau = max(models[0]["thresholds"])
    fig = _figure(11, 4)
    ax_abs, ax_rel = fig.subplots(1, 2)
    for i, model in enumerate(models):
        color = _COLORS[i % len(_COLORS)]
        layers = model["layers"]
        stats = [model["layerwise"][str(layer)] for layer in layers]
        width = np.array([s["channels"] for s in stats], dtype=float)
        mean, std = np.array([s["mean"] for s in stats]), np.array([s["std"] for s in stats])
        p25, p75 = np.array([s["p25"] for s in stats]), np.array([s["p75"] for s in stats])
        p99 = np.array([s["p99"] for s in stats])
        for ax, scale in ((ax_abs, 1.0), (ax_rel, width)):
            name = _label(model)
            ax.plot(layers, mean / scale, "o-", color=color, label=f"{name} mean")
            ax.fill_between(layers, (mean - std) / scale, (mean + std) / scale, color=color, alpha=0.12)
            ax.fill_between(layers, p25 / scale, p75 / scale, color=color, alpha=0.25)
            ax.plot(layers, p99 / scale, "--", color=color, label=f"{name} 99th pct")
    ax_abs.set_ylabel(f"dims for {tau:.0%} energy")
    ax_rel.set_ylabel(f"dims for {tau:.0%} energy / block width")
    for ax in (ax_abs, ax_rel):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("block")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Per-image SVD rank by block (band: mean±std light, 25–75th pct dark; τ={tau:g})", fontsize=10)
    return _save(fig, path)


def plot_sep_curves(models: Sequence[dict], path: str | os.PathLike) -> Path:
    """Mean SEP curve (full FFT, and folded dashed) against normalised frequency, with the diagonal: a curve on the
    diagonal means energy spread evenly over channel frequencies (b(tau) ~ tau), the paper's finding for ViTs."""
    fig = _figure(6.5, 5)
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="gray", linestyle=":", label="diagonal (white spectrum)")
    for i, model in enumerate(models):
        color = _COLORS[i % len(_COLORS)]
        sep = _last(model)["sep"]
        for mode, style in (("full", "-"), ("folded", "--")):
            curve = np.asarray(sep[mode]["curve"])
            x = np.arange(1, curve.size + 1) / curve.size
            b90 = sep[mode]["bandwidth"].get("0.9")
            extra = f", b(0.9)={b90:.3f}" if b90 is not None else ""
            ax.plot(x, curve, style, color=color, label=f"{_label(model)} {mode}{extra}")
        std = np.asarray(sep["full"]["std"])
        curve = np.asarray(sep["full"]["curve"])
        x = np.arange(1, curve.size + 1) / curve.size
        ax.fill_between(x, np.clip(curve - std, 0, 1), np.clip(curve + std, 0, 1), color=color, alpha=0.1)
    ax.set_xlabel("normalised frequency (k / curve length)")
    ax.set_ylabel("cumulative spectral energy share")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("SEP: channel-frequency energy of the tokens (last analysed block; band ±1 std over tokens)",
                 fontsize=9)
    return _save(fig, path)


def plot_svd_vs_pca(models: Sequence[dict], path: str | os.PathLike) -> Path:
    """99th-percentile dims per threshold, per-image SVD vs dataset PCA, as a share of the width: low per-image
    rank next to high dataset rank is the paper's "per-image low rank" picture."""
    thresholds = models[0]["thresholds"]
    fig = _figure(3 + 2.2 * len(thresholds), 4.5)
    ax = fig.subplots()
    x = np.arange(len(thresholds))
    n_bars = 2 * len(models)
    width = 0.8 / n_bars
    bar = 0
    for i, model in enumerate(models):
        layer = _last(model)
        channels = layer["channels"]
        color = _COLORS[i % len(_COLORS)]
        for kind, hatch in (("svd", None), ("pca", "//")):
            if kind not in layer:
                bar += 1
                continue
            values = np.array([layer[kind]["summary"][f"{t:g}"]["p99"] for t in thresholds])
            pos = x - 0.4 + width * (bar + 0.5)
            rects = ax.bar(pos, values / channels, width, color=color, alpha=0.9 if kind == "svd" else 0.45,
                           hatch=hatch, edgecolor="black", linewidth=0.5,
                           label=f"{_label(model)} {'per-image SVD' if kind == 'svd' else 'dataset PCA'}")
            for rect, v in zip(rects, values, strict=True):
                ax.annotate(f"{v:.0f}", (rect.get_x() + rect.get_width() / 2, rect.get_height()), ha="center",
                            va="bottom", fontsize=7)
            bar += 1
    ax.set_xticks(x, [f"{t:.0%}" for t in thresholds])
    ax.set_xlabel("energy threshold")
    ax.set_ylabel("99th-percentile dims / width")
    ax.set_ylim(0, 1.1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Per-image SVD vs dataset PCA (labels: dims; last analysed block)", fontsize=10)
    return _save(fig, path)


def write_plots(models: Sequence[dict], out_dir: str | os.PathLike) -> list[Path]:
    """All four figures into ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    paths = [
        plot_rank_histograms(models, out_dir / "rank_histograms.png"),
        plot_rank_vs_layer(models, out_dir / "rank_vs_layer.png"),
        plot_sep_curves(models, out_dir / "sep_curve.png"),
    ]
    if any("pca" in _last(m) for m in models):
        paths.append(plot_svd_vs_pca(models, out_dir / "svd_vs_pca.png"))
    return paths
