"""Model cards for exported students, generated from ``templates/model_card.md`` with huggingface_hub's
``ModelCard`` / ``ModelCardData`` / ``EvalResult``.

The card is rendered from two sources only: ``CardInfo`` (what a person states: teacher, method, dataset, metrics,
recipe) and the ``vitkd`` block of ``config.json`` (what the export measured: sha256, params, GMACs, img/s). So
``push_to_hub`` can regenerate the whole card from an exported folder on every push; cards are never patched.
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from ..paper import ARXIV_ID, CITATION_BIBTEX

__all__ = ["CardInfo", "render_card", "card_from_folder", "TEMPLATE_PATH", "PAPER_URL", "CITATION"]

TEMPLATE_PATH = Path(__file__).with_name("templates") / "model_card.md"
PAPER_URL = f"https://arxiv.org/abs/{ARXIV_ID}"
PLACEHOLDER_REPO_ID = "ORG/NAME"

CITATION = CITATION_BIBTEX  # one BibTeX for cards, README and docs (vitkd_zoo/paper.py)

# Dataset keys -> (Hub dataset id, display name). Any other value is used as given for both.
DATASETS = {
    "imagenet-1k": ("ILSVRC/imagenet-1k", "ImageNet-1k"),
    "fashion_mnist": ("zalando-datasets/fashion_mnist", "Fashion-MNIST"),
}

# What each family is and why, in two sentences (paper-facts.md §4-§5).
FAMILY_SUMMARY = {
    "lift": (
        "A DeiT-style ViT student whose last-block patch tokens pass through a bias-free linear projector and a "
        "LayerNorm that lift them to the teacher's width; the lifted tokens are distilled directly against the "
        "teacher's last-block tokens and, average-pooled, feed the classifier, so the projector is kept at inference. "
        "arXiv 2511.15572 finds that late-layer feature distillation fails because a narrow student cannot reproduce "
        "a wide teacher's token encoding (an encoding mismatch, not a low-rank one), and Lift removes that mismatch "
        "for about 1 % more compute."
    ),
    "widelast": (
        "A DeiT-style ViT student whose last transformer block alone runs at the teacher's width: a bias-free linear "
        "projection and LayerNorm enter a standard block at the wide width, whose raw output is distilled against "
        "the teacher's last-block tokens and whose CLS token is classified. arXiv 2511.15572 finds that late-layer "
        "feature distillation fails because a narrow student cannot reproduce a wide teacher's token encoding, and "
        "WideLast aligns the widths natively instead of projecting after the fact."
    ),
}

DEFAULT_LIMITATIONS = (
    "Needs `pip install vitkd-zoo` and `import vitkd_zoo` (or `trust_remote_code=True` in transformers): the "
    "architecture is not part of timm itself.",
    "Accuracy is stated for the evaluation setting in the results table only (one training run, no seeds "
    "reported); expect different numbers at other resolutions, crops or datasets.",
    "Image classification only; the model inherits the biases of its training data and of its teacher.",
)


@dataclass
class CardInfo:
    """What a person states about an exported student. Everything measurable is measured at export instead.

    Args:
        title: card heading (default: the repo id, else the architecture).
        description: one paragraph on this checkpoint (default: the architecture family's summary only).
        teacher: teacher model, e.g. ``"cait_s24_224.fb_dist_in1k"``.
        method: distillation objective, e.g. ``"Lift + SoftKD (alpha 0.9) + spatial-FFT feature loss (w 0.2)"``.
        dataset: ``"imagenet-1k"``, ``"fashion_mnist"`` or a Hub dataset id.
        metrics: evaluation results in percent, keys ``top1`` / ``top5`` (others are listed, not put in model-index).
        eval_split: the split ``metrics`` were measured on, e.g. ``"validation"`` or ``"test"``.
        baseline: name of the same-recipe baseline (default: DeiT with the same trunk, no Lift/WideLast).
        baseline_metrics: the baseline's results, same keys as ``metrics``.
        recipe: training settings shown as a table (epochs, batch, lr, ...).
        base_model: Hub id of the checkpoint the student was initialised from, if any.
        license: SPDX id of the weights' license.
        label_names: class names in head order (also written to ``config.json``).
        tags: extra Hub tags.
        limitations: bullet points (default: ``DEFAULT_LIMITATIONS``).
        notes: free text appended to the description.
    """

    title: str | None = None
    description: str | None = None
    teacher: str | None = None
    method: str | None = None
    dataset: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    eval_split: str | None = None
    baseline: str | None = None
    baseline_metrics: dict[str, float] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    base_model: str | None = None
    license: str = "apache-2.0"
    label_names: list[str] | None = None
    tags: list[str] = field(default_factory=list)
    limitations: list[str] | None = None
    notes: str | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> CardInfo:
        data = dict(data or {})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TypeError(f"Unknown card field(s) {unknown}; CardInfo accepts {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        try:
            json.dumps(out)
        except TypeError as e:
            raise TypeError(f"Card fields must be JSON-serialisable (they are stored in config.json): {e}") from e
        return out


def _family(architecture: str) -> str | None:
    for family in FAMILY_SUMMARY:
        if architecture.endswith("_" + family):
            return family
    return None


def _fmt_metric(value: Any) -> str:
    return "—" if value is None else (f"{value:.2f}" if isinstance(value, (int, float)) else str(value))


def _card_data(architecture: str, info: CardInfo, repo_id: str) -> ModelCardData:
    dataset_id, dataset_name = DATASETS.get(info.dataset, (info.dataset, info.dataset)) if info.dataset else (None, None)
    eval_results = []
    if dataset_id:
        for key, metric_name in (("top1", "Top-1 Accuracy"), ("top5", "Top-5 Accuracy")):
            if info.metrics.get(key) is not None:
                eval_results.append(EvalResult(
                    task_type="image-classification", task_name="Image Classification",
                    dataset_type=dataset_id, dataset_name=dataset_name, dataset_split=info.eval_split,
                    metric_type="accuracy", metric_name=metric_name, metric_value=float(info.metrics[key]),
                ))
    tags = ["image-classification", "timm", "transformers", "vitkd_zoo", "knowledge-distillation", architecture]
    family = _family(architecture)
    if family:
        tags.append(family)
    tags += [t for t in info.tags if t not in tags]
    return ModelCardData(
        library_name="timm",
        pipeline_tag="image-classification",
        license=info.license,
        tags=tags,
        datasets=[dataset_id] if dataset_id else None,
        metrics=["accuracy"] if eval_results else None,
        base_model=info.base_model,
        model_name=repo_id.split("/")[-1] if repo_id != PLACEHOLDER_REPO_ID else architecture,
        eval_results=eval_results or None,
    )


def render_card(config: Mapping[str, Any], repo_id: str | None = None) -> ModelCard:
    """Render the card of an exported folder from its ``config.json`` content (``vitkd`` block included).

    Args:
        config: the parsed ``config.json`` written by ``save_pretrained``.
        repo_id: the Hub repo the card is for; usage snippets use it (default: ``ORG/NAME`` placeholder).
    """
    vitkd = config.get("vitkd") or {}
    info = CardInfo.from_dict(vitkd.get("card"))
    architecture = config["architecture"]
    repo_id = repo_id or PLACEHOLDER_REPO_ID
    family = _family(architecture)
    pretrained_cfg = config.get("pretrained_cfg", {})
    dataset_id, dataset_name = DATASETS.get(info.dataset, (info.dataset, info.dataset)) if info.dataset else (None, None)
    cost = vitkd.get("cost") or []
    rows = []
    for row in cost:
        metrics = info.metrics if row.get("role") == "model" else info.baseline_metrics
        label = row["label"]
        if row.get("role") == "baseline" and info.baseline:  # the stated baseline, costed as the same-trunk DeiT
            label = f"{info.baseline} (cost: `{row['model']}`, same trunk)"
        rows.append(dict(
            row, label=label,
            top1=_fmt_metric(metrics.get("top1")), top5=_fmt_metric(metrics.get("top5")),
            params_fmt=f"{row['params']:,}", img_per_s_fmt=f"{row['img_per_s']:.1f}",
            gmacs_fmt=f"{row['gmacs']:.3f}" if row["gmacs"] >= 0.01 else f"{row['gmacs']:.2g}",
        ))
    num_classes = config.get("num_classes")
    input_size = pretrained_cfg.get("input_size")
    card = ModelCard.from_template(
        _card_data(architecture, info, repo_id),
        template_path=str(TEMPLATE_PATH),
        title=info.title or (repo_id if repo_id != PLACEHOLDER_REPO_ID else architecture),
        repo_id=repo_id,
        architecture=architecture,
        family_summary=FAMILY_SUMMARY.get(family, ""),
        description=info.description,
        notes=info.notes,
        teacher=info.teacher,
        method=info.method,
        dataset_name=dataset_name,
        dataset_id=dataset_id,
        eval_split=info.eval_split,
        base_model=info.base_model,
        num_classes=num_classes,
        finetune_classes=5 if num_classes != 5 else 3,
        input_size=input_size,
        input_size_str=" × ".join(str(s) for s in input_size) if input_size else None,
        model_args_json=json.dumps(config.get("model_args", {})),
        metrics_extra={k: v for k, v in info.metrics.items() if k not in ("top1", "top5")},
        cost_rows=rows,
        cost_note=vitkd.get("cost_note"),
        recipe=info.recipe,
        limitations=info.limitations if info.limitations is not None else list(DEFAULT_LIMITATIONS),
        weights_file=vitkd.get("weights_file", "model.safetensors"),
        weights_sha256=vitkd.get("weights_sha256"),
        package_version=vitkd.get("package_version"),
        has_remote_code="auto_map" in config,
        license=info.license,
        paper_url=PAPER_URL,
        citation=CITATION,
    )
    return card


def card_from_folder(folder: str | Path, repo_id: str | None = None) -> ModelCard:
    """``render_card`` for an exported folder (reads its ``config.json``)."""
    with open(Path(folder) / "config.json", encoding="utf-8") as f:
        return render_card(json.load(f), repo_id=repo_id)
