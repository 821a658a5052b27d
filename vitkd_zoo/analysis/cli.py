"""``vitkd-zoo analyze``: the paper's SVD / PCA / SEP diagnostics for one model, or a teacher and a student side by side.

Examples::

    vitkd-zoo analyze --model cait_s24_224 --pretrained --data /data/imagenet/val --out runs/cait
    vitkd-zoo analyze --compare local-dir:runs/teacher local-dir:runs/lift --data fashion-mnist --per-class 10 \\
        --out runs/compare
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from vitkd_zoo.paper import PAPER_ID

__all__ = ["register", "run", "format_table", "display_name", "load_model"]


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one number")
    return values


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _model_kwargs(pairs: Sequence[str]) -> dict:
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"model argument {pair!r} must look like KEY=VALUE, e.g. img_size=28")
        try:
            out[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key.strip()] = value
    return out


def load_model(name: str, checkpoint: str | None, kwargs: dict, pretrained: bool):
    """Build ``name`` (timm name, ``hf-hub:…``, ``local-dir:…`` or a directory) with optional local weights."""
    import vitkd_zoo

    if os.path.isdir(name):
        name = f"local-dir:{name}"
    pretrained = pretrained or name.startswith(("hf-hub:", "local-dir:"))
    if not pretrained and not checkpoint:
        print(f"warning: {name} has random weights (no --checkpoint, no --pretrained): the numbers describe an "
              "untrained network", file=sys.stderr)
    try:
        return vitkd_zoo.create_model(name, pretrained=pretrained, checkpoint_path=checkpoint, **kwargs)
    except FileNotFoundError as e:
        if checkpoint or name.startswith("local-dir:"):
            raise
        from .features import AnalysisError

        raise AnalysisError(f"could not fetch the pretrained weights of {name} ({str(e).splitlines()[0]}). "
                            "--pretrained needs network access or the weights in the Hugging Face cache; pass "
                            "local weights with --checkpoint instead.") from e


def display_name(name: str) -> str:
    """A short label for tables and plots: an export folder's run name (``runs/lift/export`` -> ``lift``)."""
    path = name.split(":", 1)[1] if name.startswith("local-dir:") else name
    if not os.path.isdir(path):
        return name
    folder = Path(path).resolve()
    return folder.parent.name if folder.name == "export" else folder.name


def _resolve_device(requested: str):
    import torch

    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {requested} requested but CUDA is not available; use --device cpu")
    return device


def _label(model: dict) -> str:
    return model.get("label") or model.get("name", "model")


def format_table(models: Sequence[dict]) -> str:
    """A short Markdown table: last analysed block of each model, 99th-percentile dims and SEP bandwidths."""
    thresholds = models[0]["thresholds"]
    sep_thresholds = models[0]["sep_thresholds"]
    th = "/".join(f"{t * 100:g}" for t in thresholds)
    sh = "/".join(f"{t * 100:g}" for t in sep_thresholds)
    lines = [
        f"| model | block | C | images | SVD dims p99 @{th}% | PCA dims p99 @{th}% | SEP b=d/C @{sh}% |",
        "|---|---|---|---|---|---|---|",
    ]
    for m in models:
        layer = m["per_layer"][str(m["last_layer"])]
        svd = "/".join(f"{layer['svd']['summary'][f'{t:g}']['p99']:.0f}" for t in thresholds)
        pca = ("/".join(f"{layer['pca']['summary'][f'{t:g}']['p99']:.0f}" for t in thresholds)
               if "pca" in layer else "–")
        sep = "/".join(f"{layer['sep']['full']['bandwidth'][f'{t:g}']:.3f}" for t in sep_thresholds)
        lines.append(f"| {_label(m)} | {m['last_layer']} | {layer['channels']} | {m['num_images']} | {svd} | {pca} "
                     f"| {sep} |")
    if any(len(m["layers"]) > 1 for m in models):
        lines.append("")
        lines.append(f"Per-image SVD dims for {max(thresholds):.0%} energy, mean (p99) by block:")
        for m in models:
            cells = ", ".join(f"{layer}: {m['layerwise'][str(layer)]['mean']:.1f} "
                              f"({m['layerwise'][str(layer)]['p99']:.0f})" for layer in m["layers"])
            lines.append(f"  {_label(m)}: {cells}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from vitkd_zoo.models import CheckpointError, UnknownModelError

    from .features import AnalysisError

    try:
        return _run(args)
    except (AnalysisError, CheckpointError, UnknownModelError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace) -> int:
    import torch

    from vitkd_zoo.version import __version__

    from .analyze import analyze_model
    from .features import AnalysisError, build_dataset, make_loader
    from .plots import write_plots

    if bool(args.model) == bool(args.compare):
        raise AnalysisError("give exactly one of --model NAME or --compare TEACHER STUDENT")
    if args.compare:
        specs = [("teacher", args.compare[0], args.teacher_checkpoint, args.teacher_arg),
                 ("student", args.compare[1], args.student_checkpoint, args.student_arg)]
    else:
        if args.teacher_checkpoint or args.student_checkpoint or args.teacher_arg or args.student_arg:
            raise AnalysisError("--teacher-*/--student-* options go with --compare; use --checkpoint / --model-arg")
        specs = [("model", args.model, args.checkpoint, [])]
    if args.compare and args.checkpoint:
        raise AnalysisError("with --compare use --teacher-checkpoint / --student-checkpoint, not --checkpoint")
    for flag, values in (("--thresholds", args.thresholds), ("--sep-thresholds", args.sep_thresholds)):
        if not all(0 < v <= 1 for v in values):
            raise AnalysisError(f"{flag} are energy fractions in (0, 1], e.g. 0.9,0.99 (not percent); got {values}")
    try:
        common = _model_kwargs(args.model_arg)
        specs = [(role, name, ckpt, {**common, **_model_kwargs(extra)}) for role, name, ckpt, extra in specs]
        device = _resolve_device(args.device)
    except ValueError as e:
        raise AnalysisError(str(e)) from e

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for role, name, checkpoint, kwargs in specs:
        print(f"[{role}] loading {name}" + (f" from {checkpoint}" if checkpoint else ""), flush=True)
        model = load_model(name, checkpoint, kwargs, args.pretrained)
        dataset, image_names = build_dataset(
            args.data, model, args.per_class, split=args.split, mean=args.mean, std=args.std)
        print(f"[{role}] {len(dataset)} images ({args.per_class} per class) from {args.data}; layers {args.layers}; "
              f"device {device}", flush=True)
        start = time.perf_counter()
        result = analyze_model(
            model, make_loader(dataset, args.batch_size, args.workers), layers=args.layers,
            thresholds=args.thresholds, sep_thresholds=args.sep_thresholds, pca_layers=args.pca_layers,
            center=args.center, norm=args.norm, device=device, progress=not args.quiet,
        )
        seconds = time.perf_counter() - start
        print(f"[{role}] analysed {result['num_images']} images x {len(result['layers'])} blocks in {seconds:.1f} s",
              flush=True)
        label = display_name(name)
        if any(r["label"] == label for r in results):
            label = f"{label} ({role})"
        results.append({
            "name": name, "label": label, "role": role, "checkpoint": str(checkpoint) if checkpoint else None, "model_args": kwargs,
            "architecture": type(model).__name__, "params": sum(p.numel() for p in model.parameters()),
            "images": image_names, "seconds": round(seconds, 3), **result,
        })
        del model

    report = {
        "tool": "vitkd-zoo analyze", "version": __version__, "paper": PAPER_ID,
        "definitions": "docs/analysis.md",
        "data": str(args.data), "split": args.split if str(args.data).lower() == "fashion-mnist" else None,
        "per_class": args.per_class, "device": str(device), "norm": args.norm,
        "environment": {"python": platform.python_version(), "torch": torch.__version__},
        "compare": bool(args.compare), "models": results,
    }
    json_path = out_dir / "analysis.json"
    json_path.write_text(json.dumps(report, indent=1))
    print(format_table(results))
    print(f"wrote {json_path}")
    if not args.no_plots:
        for path in write_plots(results, out_dir):
            print(f"wrote {path}")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "analyze", help="per-image SVD / dataset PCA / SEP diagnostics of a model's tokens (arXiv 2511.15572)",
        description="The paper's feature diagnostics on the raw block outputs (patch tokens, before the final "
                    "norm) of the first image(s) of each class. Writes analysis.json and PNG plots to --out.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_argument_group("model")
    src.add_argument("--model", help="timm / vitkd_zoo name, hf-hub:ORG/NAME, local-dir:PATH or an export directory")
    src.add_argument("--checkpoint", help="local .safetensors / .pth weights for --model")
    src.add_argument("--compare", nargs=2, metavar=("TEACHER", "STUDENT"), help="analyse two models side by side")
    src.add_argument("--teacher-checkpoint", help="weights for the --compare teacher")
    src.add_argument("--student-checkpoint", help="weights for the --compare student")
    src.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE",
                     help="timm.create_model argument for every model (repeat), e.g. img_size=28")
    src.add_argument("--teacher-arg", action="append", default=[], metavar="KEY=VALUE", help="… for the teacher only")
    src.add_argument("--student-arg", action="append", default=[], metavar="KEY=VALUE", help="… for the student only")
    src.add_argument("--pretrained", action="store_true",
                     help="load the name's pretrained weights (implied for hf-hub: and local-dir:)")
    data = p.add_argument_group("data")
    data.add_argument("--data", required=True, help="ImageFolder-style directory (class folders) or 'fashion-mnist'")
    data.add_argument("--per-class", type=_positive_int, default=1,
                      help="images per class: the first by sorted file name (the paper: 1 of each ImageNet class)")
    data.add_argument("--split", default="test", choices=("train", "test"), help="Fashion-MNIST split")
    data.add_argument("--mean", type=_floats, help="override normalisation mean, e.g. 0.5,0.5,0.5")
    data.add_argument("--std", type=_floats, help="override normalisation std")
    what = p.add_argument_group("analysis")
    what.add_argument("--layers", default="all", help="'last', 'all' or block indices like '0,5,-1'")
    what.add_argument("--pca-layers", default="last", choices=("last", "all", "none"),
                      help="blocks for the dataset-level PCA (the paper: last)")
    what.add_argument("--center", action="store_true", help="dataset PCA on the covariance (paper: uncentered)")
    what.add_argument("--norm", action="store_true",
                      help="apply the model's final norm to the taps (paper: raw residual stream; Lift: the lift)")
    what.add_argument("--thresholds", type=_floats, default=(0.80, 0.90, 0.95, 0.99),
                      help="energy fractions for SVD/PCA dims")
    what.add_argument("--sep-thresholds", type=_floats, default=(0.50, 0.60, 0.70, 0.80, 0.90),
                      help="energy fractions for SEP bandwidths")
    run_ = p.add_argument_group("run")
    run_.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, …")
    run_.add_argument("--batch-size", type=_positive_int, default=32)
    run_.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    run_.add_argument("--out", required=True, help="output directory (analysis.json and PNGs)")
    run_.add_argument("--no-plots", action="store_true", help="write analysis.json only")
    run_.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)
