"""``vitkd-zoo quickstart`` and ``vitkd-zoo paper-mini``: arXiv 2511.15572 in miniature, on real data, offline.

A wide teacher (a ViT twice the students' width, patch 4) is trained on Fashion-MNIST; students are then
distilled through the real trainer with the same recipe, seed and budget - CE only, logit KD, logit KD + the
paper's "standard feature KD" (teacher channels average-pooled), Lift + KD and WideLast + KD. The paper's analysis
runs on the teacher and every student, a results table is written, and the best student is exported with a model
card, placed in a local Hub stand-in (a Hugging Face cache) and loaded back in a fresh process through timm's
``hf-hub:`` and transformers' ``pipeline`` - the path a Hub user takes.

``paper-mini`` adds the train-only projector, feature-only losses, Lift/WideLast without a teacher and a
parameter-matched uniform-width control, over several seeds, and reports mean +- std.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

__all__ = [
    "Variant", "QUICKSTART_VARIANTS", "PAPER_MINI_VARIANTS", "PROFILES", "run_quickstart", "run_paper_mini",
    "format_results_markdown", "parse_results_markdown", "place_in_hf_cache", "StageError",
]

CONFIG_DIR = Path(__file__).resolve().parents[1] / "training" / "configs" / "fmnist"
HUB_REPO_ID = "vitkd-zoo/fmnist-quickstart"


@dataclass(frozen=True)
class Variant:
    """One training run of the comparison: a recipe from ``training/configs/fmnist`` plus overrides."""

    name: str
    config: str
    label: str
    overrides: dict = field(default_factory=dict)
    uses_teacher: bool = True


QUICKSTART_VARIANTS: tuple[Variant, ...] = (
    Variant("ce", "deit_scratch.yaml", "ViT, CE only (no teacher)", uses_teacher=False),
    Variant("kd", "deit_softkd.yaml", "ViT, logit KD"),
    Variant("kd_pool", "deit_softkd_pool_fft.yaml", "ViT, logit KD + pooled-teacher feature KD (FFT)"),
    Variant("lift_kd", "lift_softkd_fft.yaml", "Lift, logit KD + feature KD (FFT)"),
    Variant("widelast_kd", "widelast_softkd_mse.yaml", "WideLast, logit KD + feature KD (MSE)"),
)

PAPER_MINI_VARIANTS: tuple[Variant, ...] = QUICKSTART_VARIANTS + (
    Variant("kd_projector", "deit_softkd_projector.yaml", "ViT, logit KD + train-only projector feature KD (MSE)"),
    Variant("lift_mse", "lift_mse.yaml", "Lift, feature KD only (MSE, alpha 0)"),
    Variant("widelast_fft", "widelast_fft.yaml", "WideLast, feature KD only (FFT, alpha 0)"),
    Variant("lift_scratch", "lift_scratch.yaml", "Lift, no teacher", uses_teacher=False),
    Variant("widelast_scratch", "widelast_scratch.yaml", "WideLast, no teacher", uses_teacher=False),
    Variant("uniform_kd_pool", "deit_softkd_pool_fft.yaml",
            "uniform-width ViT, params matched to WideLast, logit KD + pooled feature KD (FFT)"),
)

# Budgets. Every student of one run gets the same one; the teacher trains longer, once, and is cached.
PROFILES: dict[str, dict[str, Any]] = {
    # ~8 minutes on 2 CPU cores: teacher 40k images seen, each student 24k, evaluated once on the 10k test set
    "default": dict(student={"epochs": 4, "max_train_samples": 6000, "max_eval_samples": None, "eval_every_epochs": 4},
                    teacher={"epochs": 4, "max_train_samples": 10000, "max_eval_samples": None, "eval_every_epochs": 4},
                    analysis_per_class=20),
    # every stage in about a minute, for tests
    "fast": dict(student={"epochs": 1, "max_train_samples": 200, "max_eval_samples": 100,
                          "global_batch_size": 50, "warmup_epochs": 0},
                 teacher={"epochs": 1, "max_train_samples": 200, "max_eval_samples": 100,
                          "global_batch_size": 50, "warmup_epochs": 0},
                 analysis_per_class=2),
}
# Settings every run of the comparison shares (RGB so transformers' pipeline, which feeds RGB, can use the export).
COMMON_OVERRIDES = {"model_kwargs.in_chans": 3, "log_with": [], "checkpoints_total_limit": 1,
                    "export_benchmark_seconds": 0.5, "progress": False}


class StageError(RuntimeError):
    """A quickstart stage failed; ``stage`` names it. Artifacts of earlier stages are kept."""

    def __init__(self, stage: str, error: BaseException):
        super().__init__(f"stage '{stage}' failed: {type(error).__name__}: {error}")
        self.stage = stage
        self.error = error


# ----------------------------------------------------------------------------------------------------------------
# results table
# ----------------------------------------------------------------------------------------------------------------
_COLUMNS = (
    ("variant", "variant"), ("label", "method"), ("architecture", "student"), ("top1", "top-1 %"),
    ("top5", "top-5 %"), ("params", "params"), ("gmacs", "GMACs"), ("img_per_s", "CPU img/s"),
    ("svd99_p99", "SVD dims 99 % (p99)"), ("sep90", "SEP b(0.9)"),
)


_FORMATS = {"top1": ".2f", "top5": ".2f", "gmacs": ".4f", "img_per_s": ".0f", "svd99_p99": ".1f", "sep90": ".3f"}


def _cell(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):  # mean +- std over seeds
        return f"{value['mean']:.2f} ± {value['std']:.2f}"
    if isinstance(value, int) and not isinstance(value, bool) and key == "params":
        return f"{value:,}"
    if isinstance(value, (int, float)) and key in _FORMATS:
        return format(value, _FORMATS[key])
    return str(value)


def format_results_markdown(rows: Sequence[dict], teacher: Optional[dict] = None) -> str:
    """The results table as Markdown (one row per variant; the teacher, if given, first)."""
    lines = ["| " + " | ".join(title for _, title in _COLUMNS) + " |", "|" + "---|" * len(_COLUMNS)]
    for row in ([teacher] if teacher else []) + list(rows):
        lines.append("| " + " | ".join(_cell(key, row.get(key)) for key, _ in _COLUMNS) + " |")
    return "\n".join(lines)


def parse_results_markdown(text: str) -> list[dict]:
    """Read a table written by ``format_results_markdown`` back into rows (numbers as numbers, '-' as None)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        raise ValueError("no Markdown table found")
    titles = [c.strip() for c in lines[0].strip("|").split("|")]
    keys = {title: key for key, title in _COLUMNS}
    unknown = [t for t in titles if t not in keys]
    if unknown:
        raise ValueError(f"not a vitkd_zoo results table: unknown columns {unknown}")
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) != len(titles):
            raise ValueError(f"row has {len(cells)} cells, header has {len(titles)}: {line}")
        row = {}
        for title, cell in zip(titles, cells, strict=True):
            row[keys[title]] = _parse_cell(cell)
        rows.append(row)
    return rows


def _parse_cell(cell: str) -> Any:
    if cell == "-":
        return None
    if "±" in cell:
        mean, std = (float(x) for x in cell.split("±"))
        return {"mean": mean, "std": std}
    try:
        number = float(cell.replace(",", ""))
    except ValueError:
        return cell
    return int(number) if number.is_integer() and "." not in cell else number


# ----------------------------------------------------------------------------------------------------------------
# local Hub stand-in
# ----------------------------------------------------------------------------------------------------------------
def place_in_hf_cache(folder: str | os.PathLike, repo_id: str, cache_dir: str | os.PathLike) -> Path:
    """Put an exported folder into a Hugging Face cache as ``repo_id@main`` (blobs + snapshot links + refs), the
    layout ``hf_hub_download`` reads with ``HF_HUB_OFFLINE=1``. Returns the snapshot folder."""
    folder, cache_dir = Path(folder), Path(cache_dir)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in files}
    commit = hashlib.sha1("".join(f"{p.relative_to(folder)}:{d}" for p, d in digests.items()).encode()).hexdigest()
    repo = cache_dir / f"models--{repo_id.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    for path, digest in digests.items():
        blob = repo / "blobs" / digest
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            shutil.copyfile(path, blob)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.exists() or link.is_symlink():
            link.unlink()
        link.symlink_to(os.path.relpath(blob, link.parent))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


_RELOAD_SCRIPT = r"""
import json, sys
import numpy as np, torch
from PIL import Image
import timm
import vitkd_zoo  # registers the students: the first line of every vitkd_zoo model card
from transformers import pipeline

repo_id, images_path, out_path = sys.argv[1:4]
images = np.load(images_path)
model = timm.create_model(f"hf-hub:{repo_id}", pretrained=True).eval()
cfg = timm.data.resolve_model_data_config(model)
transform = timm.data.create_transform(**cfg)
pil = [Image.fromarray(a).convert("RGB") for a in images]
with torch.no_grad():
    logits = model(torch.stack([transform(im) for im in pil]))
classifier = pipeline("image-classification", model=repo_id)
preds = [classifier(im, top_k=1)[0] for im in pil]
json.dump({"logits": logits.tolist(), "pipeline": preds, "timm_labels": [
    model.pretrained_cfg.get("label_names", [None] * logits.shape[1])[i] if model.pretrained_cfg.get("label_names")
    else int(i) for i in logits.argmax(1).tolist()]}, open(out_path, "w"))
"""


def reload_from_local_hub(repo_id: str, cache_dir: Path, images, work_dir: Path) -> dict:
    """Load ``repo_id`` from the local cache in a fresh offline process via timm ``hf-hub:`` and transformers
    ``pipeline``; returns their logits and predictions."""
    import numpy as np

    images_path, out_path = work_dir / "reload_images.npy", work_dir / "reload.json"
    np.save(images_path, images)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache_dir), HF_HUB_DISABLE_TELEMETRY="1",
               TRANSFORMERS_VERBOSITY="error")
    done = subprocess.run([sys.executable, "-c", _RELOAD_SCRIPT, repo_id, str(images_path), str(out_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"reloading {repo_id} from the local Hub failed:\n{done.stderr[-3000:]}")
    return json.loads(out_path.read_text())


# ----------------------------------------------------------------------------------------------------------------
# stages
# ----------------------------------------------------------------------------------------------------------------
def _say(text: str) -> None:
    print(text, flush=True)


class _Stages:
    """Runs named stages in order, records each one's status in ``stages.json``, stops at the first failure."""

    def __init__(self, out_dir: Path, total: int):
        self.out_dir, self.total, self.done = out_dir, total, []
        self.path = out_dir / "stages.json"

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        index = len(self.done) + 1
        _say(f"\n[{index}/{self.total}] {name}")
        start = time.perf_counter()
        try:
            result = fn()
        except Exception as e:
            self.done.append(dict(stage=name, status="failed", seconds=round(time.perf_counter() - start, 1),
                                  error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()))
            self._write()
            raise StageError(name, e) from e
        self.done.append(dict(stage=name, status="ok", seconds=round(time.perf_counter() - start, 1)))
        self._write()
        _say(f"[{index}/{self.total}] {name}: done in {self.done[-1]['seconds']:.0f} s")
        return result

    def _write(self) -> None:
        self.path.write_text(json.dumps(self.done, indent=1))


def _config_path(name: str) -> Path:
    path = CONFIG_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the quickstart from a vitkd_zoo checkout (training/configs)")
    return path


def _train(config: str, output_dir: Path, overrides: dict) -> dict:
    from vitkd_zoo.distill import run_training

    if output_dir.exists():
        shutil.rmtree(output_dir)
    return run_training(_config_path(config), output_dir, overrides)


@dataclass
class _Job:
    """One training run; ``needs`` names the teacher job whose export it distils from."""

    key: str
    config: str
    output_dir: Path
    overrides: dict
    needs: Optional[str] = None
    cache_key: Optional[str] = None  # teachers: reuse a finished run with the same recipe


def _cached(job: _Job) -> Optional[dict]:
    marker = job.output_dir / "recipe.sha"
    if job.cache_key and marker.is_file() and marker.read_text() == job.cache_key \
            and (job.output_dir / "summary.json").is_file() and (job.output_dir / "export" / "config.json").is_file():
        return json.loads((job.output_dir / "summary.json").read_text())
    return None


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)


def _run_jobs(jobs: Sequence[_Job], workers: int, on_done: Callable[[_Job, dict, bool], None]) -> dict[str, dict]:
    """Run training jobs in dependency order, ``workers`` at a time in separate processes of one CPU thread each.

    These models are too small to gain from a second thread, so two runs side by side double the throughput of a
    2-core machine. ``workers=1`` runs in this process (used on a GPU, and by tests that patch ``_train``).
    """
    results: dict[str, dict] = {}
    pending = list(jobs)

    def ready(job: _Job) -> Optional[dict]:
        if job.needs and job.needs not in results:
            return None
        overrides = dict(job.overrides)
        if job.needs:
            overrides["teacher"] = results[job.needs]["export_dir"]
        return overrides

    def finish(job: _Job, summary: dict, cached: bool) -> None:
        results[job.key] = summary
        if job.cache_key and not cached:
            (job.output_dir / "recipe.sha").write_text(job.cache_key)
        on_done(job, summary, cached)

    for job in list(pending):
        if (summary := _cached(job)) is not None:
            pending.remove(job)
            finish(job, summary, True)
    if workers <= 1:
        for job in pending:
            finish(job, _train(job.config, job.output_dir, ready(job)), False)
        return results

    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_init_worker) as pool:
        running: dict = {}
        try:
            while pending or running:
                for job in list(pending):
                    if len(running) >= workers:
                        break
                    overrides = ready(job)
                    if overrides is not None:
                        running[pool.submit(_train, job.config, job.output_dir, overrides)] = job
                        pending.remove(job)
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    job = running.pop(future)
                    finish(job, future.result(), False)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return results


def _teacher_job(out_dir: Path, profile: dict, seed: int, device_overrides: dict, key: str = "teacher") -> _Job:
    """The wide teacher; a later run with the same recipe reuses it."""
    overrides = {**COMMON_OVERRIDES, **device_overrides, **profile["teacher"], "seed": seed}
    cache_key = hashlib.sha256(json.dumps(
        [_config_path("teacher.yaml").read_text(), _config_path("_base.yaml").read_text(), overrides],
        sort_keys=True, default=str).encode()).hexdigest()[:16]
    return _Job(key, "teacher.yaml", out_dir / "teacher", overrides, cache_key=cache_key)


def _say_done(job: _Job, summary: dict, cached: bool) -> None:
    if cached:
        _say(f"  {job.key}: reusing the cached run in {job.output_dir} (top-1 {summary['top1']:.2f} %); "
             "delete it to retrain")
    else:
        _say(f"  {job.key}: top-1 {summary['top1']:.2f} % on {summary.get('eval_count', '?')} test images "
             f"({summary.get('images_seen', 0):,} images seen, {summary.get('train_time_s', 0):.0f} s)")


def _uniform_width(profile_overrides: dict) -> int:
    """The plain-ViT width whose parameter count is closest to the WideLast student's (the width control)."""
    import timm

    import vitkd_zoo  # noqa: F401
    from vitkd_zoo.distill.config import load_config

    wide = load_config(_config_path("widelast_softkd_mse.yaml"), profile_overrides)
    vit = load_config(_config_path("deit_softkd_pool_fft.yaml"), profile_overrides)
    target = sum(p.numel() for p in timm.create_model(wide["model"], num_classes=10, **wide["model_kwargs"]).parameters())
    heads = vit["model_kwargs"].get("num_heads", 1)

    def params(width: int) -> int:
        kwargs = dict(vit["model_kwargs"], embed_dim=width)
        return sum(p.numel() for p in timm.create_model(vit["model"], num_classes=10, **kwargs).parameters())

    base = vit["model_kwargs"]["embed_dim"]
    return min(range(base, 4 * base + 1, 2 * heads), key=lambda w: abs(params(w) - target))


def _student_job(variant: Variant, out_dir: Path, profile: dict, seed: int, device_overrides: dict,
                 teacher_key: str, uniform_width: Optional[int] = None, key: Optional[str] = None) -> _Job:
    overrides = {**COMMON_OVERRIDES, **device_overrides, **profile["student"], "seed": seed, **variant.overrides}
    if variant.name == "uniform_kd_pool" and uniform_width:
        overrides["model_kwargs.embed_dim"] = uniform_width
    if not variant.uses_teacher:
        overrides["teacher"] = None
    return _Job(key or variant.name, variant.config, out_dir / variant.name, overrides,
                needs=teacher_key if variant.uses_teacher else None)


def _load_export(folder: Path):
    import vitkd_zoo

    return vitkd_zoo.create_model(f"local-dir:{folder.resolve()}", pretrained=True).eval()


def _analysis_stage(runs: dict[str, Path], out_dir: Path, per_class: int, device: Optional[str]) -> dict[str, dict]:
    """The paper's diagnostics (per-image SVD ranks, dataset PCA, SEP) for the teacher and each student."""
    from vitkd_zoo.analysis import analyze_model, build_dataset, make_loader
    from vitkd_zoo.analysis.plots import write_plots
    from vitkd_zoo.models import VisionTransformerLift

    results = []
    for name, export in runs.items():
        model = _load_export(export)
        dataset, _ = build_dataset("fashion-mnist", model, per_class, split="test")
        # Lift's lift sits in the final-norm slot: norm=True analyses the lifted tokens it distills and classifies
        lifted = isinstance(model, VisionTransformerLift)
        result = analyze_model(model, make_loader(dataset, 64), layers="all", device=device, norm=lifted)
        results.append({"name": name + (" (lifted)" if lifted else ""),
                        "role": "teacher" if name == "teacher" else "student",
                        "architecture": type(model).__name__, **result})
        _say(f"  {name}: {result['num_images']} images x {len(result['layers'])} blocks")
    analysis_dir = out_dir / "analysis"
    analysis_dir.mkdir(parents=True, exist_ok=True)
    (analysis_dir / "analysis.json").write_text(json.dumps({"models": results}, indent=1))
    plots = write_plots(results, analysis_dir)
    _say(f"  plots: {', '.join(p.name for p in plots)}")
    return {r["name"].replace(" (lifted)", ""): _analysis_summary(r) for r in results}


def _analysis_summary(result: dict) -> dict:
    last = result["per_layer"][str(result["layers"][-1])]
    return {"svd99_p99": _pick(last, "svd", "summary", "0.99", "p99"),
            "sep90": _pick(last, "sep", "full", "bandwidth", "0.9")}


def _pick(tree: dict, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


def _measure(runs: dict[str, Path]) -> dict[str, dict]:
    """Params, GMACs and CPU img/s of each exported model, timed interleaved in this process."""
    from vitkd_zoo.commands.models import count_gmacs, count_params, images_per_second

    models = {name: _load_export(path).cpu() for name, path in runs.items()}
    input_size = tuple(next(iter(models.values())).pretrained_cfg["input_size"])
    speed = images_per_second(models, input_size, batch_size=256, seconds=1.5)  # per model, interleaved rounds
    return {name: dict(params=count_params(m), gmacs=round(count_gmacs(m, input_size), 5),
                       img_per_s=round(speed[name], 1)) for name, m in models.items()}


# ----------------------------------------------------------------------------------------------------------------
# the quickstart
# ----------------------------------------------------------------------------------------------------------------
def _device_overrides(device: str) -> dict:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda was asked for but torch sees no GPU")
        return {"mixed_precision": "bf16", "num_workers": 4}
    os.environ["ACCELERATE_USE_CPU"] = "true"
    return {}


def run_quickstart(out_dir: str | os.PathLike = "runs/quickstart", *, fast: bool = False, device: str = "cpu",
                   seed: int = 0, jobs: int = 2, reload_images: int = 5) -> dict:
    """Run every stage; returns the results dict (also ``results.json``). Raises ``StageError`` on failure."""
    import torch

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    profile = PROFILES["fast" if fast else "default"]
    stages = _Stages(out_dir, total=5)
    started = time.perf_counter()

    def data():
        from vitkd_zoo.data import find_fashion_mnist, load_fashion_mnist

        train, test = load_fashion_mnist("train"), load_fashion_mnist("test")
        _say(f"  Fashion-MNIST from {find_fashion_mnist()}: {len(train[1]):,} train / {len(test[1]):,} test images")
        return test

    test_images, test_labels = stages.run("data: Fashion-MNIST (real, offline)", data)
    device_overrides = _device_overrides(device)
    workers = 1 if device == "cuda" else max(1, jobs)

    def train_all():
        teacher_job = _teacher_job(out_dir, profile, seed, device_overrides)
        student_jobs = [_student_job(v, out_dir / "students", profile, seed, device_overrides, teacher_job.key)
                        for v in QUICKSTART_VARIANTS]
        _say(f"  the wide teacher (cached after the first run), then {len(student_jobs)} students with one recipe, "
             f"seed and budget; {workers} run(s) at a time")
        done = _run_jobs([teacher_job, *student_jobs], workers, _say_done)
        return done["teacher"], {v.name: done[v.name] for v in QUICKSTART_VARIANTS}  # recipe order, not finish order

    teacher, summaries = stages.run(
        f"train: the wide teacher and {len(QUICKSTART_VARIANTS)} students (CE, KD, KD + pooled feature, Lift, WideLast)",
        train_all)
    teacher_export = Path(teacher["export_dir"])
    exports = {"teacher": teacher_export, **{n: Path(s["export_dir"]) for n, s in summaries.items()}}
    analysis = stages.run("analysis: SVD ranks, dataset PCA, SEP (+ plots)",
                          lambda: _analysis_stage(exports, out_dir, profile["analysis_per_class"],
                                                  "cuda" if device == "cuda" else "cpu"))

    def table():
        cost = _measure(exports)
        rows = []
        for variant in QUICKSTART_VARIANTS:
            s = summaries[variant.name]
            rows.append(dict(variant=variant.name, label=variant.label, architecture=s["config"]["model"],
                             top1=s["top1"], top5=s["top5"], eval_count=s.get("eval_count"),
                             **cost[variant.name], **analysis.get(variant.name, {})))
        teacher_row = dict(variant="teacher", label="wide teacher (CE only)", architecture=teacher["config"]["model"],
                           top1=teacher["top1"], top5=teacher["top5"], **cost["teacher"], **analysis["teacher"])
        results = dict(teacher=teacher_row, students=rows, profile="fast" if fast else "default", seed=seed,
                       device=device, environment=_environment())
        (out_dir / "results.json").write_text(json.dumps(results, indent=1))
        markdown = format_results_markdown(rows, teacher_row)
        (out_dir / "results.md").write_text(_results_header(results) + markdown + "\n")
        _say(markdown)
        return results

    results = stages.run("results: top-1 on the test set, params, MACs, CPU img/s", table)

    def publish():
        from vitkd_zoo.data import FASHION_MNIST_CLASSES
        from vitkd_zoo.hub import save_pretrained

        best = max(results["students"], key=lambda r: r["top1"])
        baseline = next(r for r in results["students"] if r["variant"] == "kd")
        model = _load_export(exports[best["variant"]])
        summary = summaries[best["variant"]]
        card = dict(
            title=f"{best['architecture']} distilled on Fashion-MNIST (vitkd_zoo quickstart)",
            teacher=f"{teacher['config']['model']} (width {teacher['config']['model_kwargs'].get('embed_dim')}, "
                    f"trained by the quickstart, top-1 {teacher['top1']:.2f} %)",
            method=best["label"], dataset="fashion_mnist", eval_split="test",
            metrics={"top1": best["top1"], "top5": best["top5"]},
            baseline=f"same-recipe plain ViT with logit KD ({baseline['architecture']})",
            baseline_metrics={"top1": baseline["top1"], "top5": baseline["top5"]},
            recipe={k: summary["config"][k] for k in ("epochs", "global_batch_size", "lr", "weight_decay", "alpha",
                                                      "feature_loss", "feature_weight", "max_train_samples", "seed")},
            label_names=list(FASHION_MNIST_CLASSES),
            notes="Trained on the CPU by `make quickstart` as a small-scale check of arXiv 2511.15572; "
                  "not an ImageNet model.",
        )
        export_dir = save_pretrained(model, out_dir / "export" / HUB_REPO_ID.split("/")[1], card=card,
                                     repo_id=HUB_REPO_ID, overwrite=True, benchmark_seconds=0.5)
        cache_dir = out_dir / "hub-cache"
        place_in_hf_cache(export_dir, HUB_REPO_ID, cache_dir)
        pick = [int(i) for i in range(0, len(test_labels), max(1, len(test_labels) // reload_images))][:reload_images]
        reloaded = reload_from_local_hub(HUB_REPO_ID, cache_dir, test_images[pick], out_dir)
        expected = _reference_logits(model, test_images[pick])
        diff = (torch.tensor(reloaded["logits"]) - expected).abs().max().item()
        if diff != 0.0:
            raise RuntimeError(f"logits after the Hub round trip differ from the trained model by {diff:g}")
        _say(f"  exported {best['variant']} ({best['architecture']}, top-1 {best['top1']:.2f} %) to {export_dir}")
        _say(f"  loaded back from the local Hub ({cache_dir}) with timm hf-hub:{HUB_REPO_ID} and transformers "
             f"pipeline in a fresh process: logits identical to the trained model")
        for i, idx in enumerate(pick):
            pred = reloaded["pipeline"][i]
            _say(f"    test image {idx:5d}: true {FASHION_MNIST_CLASSES[test_labels[idx]]:<12} timm "
                 f"{reloaded['timm_labels'][i]:<12} pipeline {pred['label']} ({pred['score']:.2f})")
        return dict(export_dir=str(export_dir), cache_dir=str(cache_dir), best=best["variant"], max_abs_diff=diff,
                    predictions=reloaded["pipeline"])

    hub = stages.run("publish: export the best student with a model card, load it back like a Hub user", publish)
    results["hub"] = hub
    results["seconds"] = round(time.perf_counter() - started, 1)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    _say(f"\nDone in {results['seconds'] / 60:.1f} min. Artifacts:\n"
         f"  results table    {out_dir / 'results.md'} (+ results.json)\n"
         f"  teacher          {out_dir / 'teacher'}\n"
         f"  students         {out_dir / 'students'}/<variant> (checkpoints, metrics.jsonl, summary.json, export/)\n"
         f"  analysis plots   {out_dir / 'analysis'}\n"
         f"  Hub export       {hub['export_dir']} (model card README.md, config.json, model.safetensors)\n"
         f"  local Hub cache  {hub['cache_dir']} (HF_HUB_CACHE for timm 'hf-hub:{HUB_REPO_ID}')")
    return results


def _reference_logits(model, images):
    import timm
    import torch
    from PIL import Image

    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    batch = torch.stack([transform(Image.fromarray(a).convert("RGB")) for a in images])
    with torch.no_grad():
        return model.cpu().eval()(batch)


def _environment() -> dict:
    import platform

    import timm
    import torch

    return dict(python=platform.python_version(), torch=torch.__version__, timm=timm.__version__,
                cpu_threads=torch.get_num_threads(), machine=platform.machine(), cpus=os.cpu_count())


def _results_header(results: dict) -> str:
    env = results["environment"]
    return (f"Fashion-MNIST test set, profile `{results['profile']}`, seed {results['seed']}, device "
            f"{results['device']}; torch {env['torch']}, timm {env['timm']}, {env['cpus']} CPUs.\n\n")


# ----------------------------------------------------------------------------------------------------------------
# paper-mini: all variants, several seeds
# ----------------------------------------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> dict:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "values": list(values)}


def run_paper_mini(out_dir: str | os.PathLike = "runs/paper-mini", *, seeds: Sequence[int] = (0, 1, 2),
                   fast: bool = False, device: str = "cpu", results_dir: Optional[str | os.PathLike] = None,
                   variants: Optional[Sequence[str]] = None, jobs: int = 2) -> dict:
    """Every variant of ``PAPER_MINI_VARIANTS`` for each seed (one teacher per seed), aggregated as mean +- std."""
    out_dir = Path(out_dir)
    profile = PROFILES["fast" if fast else "default"]
    device_overrides = _device_overrides(device)
    chosen = [v for v in PAPER_MINI_VARIANTS if variants is None or v.name in variants]
    width = _uniform_width({**COMMON_OVERRIDES, **profile["student"]})
    started = time.perf_counter()
    job_list: list[_Job] = []
    for seed in seeds:
        seed_dir = out_dir / f"seed{seed}"
        job_list.append(_teacher_job(seed_dir, profile, seed, device_overrides, key=f"seed{seed}/teacher"))
    for seed in seeds:
        for variant in chosen:
            job_list.append(_student_job(variant, out_dir / f"seed{seed}", profile, seed, device_overrides,
                                         f"seed{seed}/teacher", width, key=f"seed{seed}/{variant.name}"))
    workers = 1 if device == "cuda" else max(1, jobs)
    _say(f"{len(job_list)} runs ({len(seeds)} teachers, {len(chosen)} variants x {len(seeds)} seeds), "
         f"{workers} at a time; uniform-width control: embed_dim {width}")
    done = _run_jobs(job_list, workers, _say_done)
    teachers = [done[f"seed{seed}/teacher"] for seed in seeds]
    per_seed = {v.name: [done[f"seed{seed}/{v.name}"] for seed in seeds] for v in chosen}
    exports = {"teacher": Path(teachers[0]["export_dir"]),
               **{name: Path(runs[0]["export_dir"]) for name, runs in per_seed.items()}}
    cost = _measure(exports)
    rows = []
    for variant in chosen:
        runs = per_seed[variant.name]
        rows.append(dict(variant=variant.name, label=variant.label, architecture=runs[0]["config"]["model"],
                         top1=_mean_std([r["top1"] for r in runs]), top5=_mean_std([r["top5"] for r in runs]),
                         **cost[variant.name],
                         embed_dim=runs[0]["config"]["model_kwargs"].get("embed_dim")))
    teacher_row = dict(variant="teacher", label="wide teacher (CE only)", architecture=teachers[0]["config"]["model"],
                       top1=_mean_std([t["top1"] for t in teachers]), top5=_mean_std([t["top5"] for t in teachers]),
                       **cost["teacher"])
    results = dict(teacher=teacher_row, students=rows, seeds=list(seeds), profile="fast" if fast else "default",
                   device=device, environment=_environment(), uniform_width=width,
                   minutes=round((time.perf_counter() - started) / 60, 1))
    results_dir = Path(results_dir) if results_dir else out_dir
    results_dir.mkdir(parents=True, exist_ok=True)
    analysis_runs = {k: exports[k] for k in ("teacher", "kd", "kd_pool", "lift_kd", "widelast_kd") if k in exports}
    analysis = _analysis_stage(analysis_runs, results_dir, profile["analysis_per_class"],
                               "cuda" if device == "cuda" else "cpu")
    for row in rows + [teacher_row]:
        row.update(analysis.get(row["variant"], {}))
    (results_dir / "results.json").write_text(json.dumps(results, indent=1))
    markdown = format_results_markdown(rows, teacher_row)
    (results_dir / "results.md").write_text(
        f"Fashion-MNIST test set (10,000 images), mean ± std over seeds {list(seeds)}, profile "
        f"`{results['profile']}`; {results['minutes']} min on {results['environment']['cpus']} CPUs "
        f"({device}); torch {results['environment']['torch']}, timm {results['environment']['timm']}.\n\n"
        + markdown + "\n")
    _say("\n" + markdown)
    _say(f"\nwrote {results_dir / 'results.md'}, results.json and analysis/ plots in {results['minutes']} min")
    return results


# ----------------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------------
def _run_quickstart_cli(args: argparse.Namespace) -> int:
    try:
        run_quickstart(args.out, fast=args.fast, device=args.device, seed=args.seed, jobs=args.jobs)
    except StageError as e:
        kept = ", ".join(s["stage"].split(":")[0] for s in json.loads((Path(args.out) / "stages.json").read_text())
                         if s["status"] == "ok")
        print(f"\nquickstart {e}\nWhat earlier stages produced is kept in {args.out} ({kept or 'nothing yet'}); "
              f"see {Path(args.out) / 'stages.json'} for the traceback.", file=sys.stderr)
        return 1
    return 0


def _run_paper_mini_cli(args: argparse.Namespace) -> int:
    run_paper_mini(args.out, seeds=args.seeds, fast=args.fast, device=args.device, results_dir=args.results_dir,
                   variants=args.variants, jobs=args.jobs)
    return 0


def _default_jobs() -> int:
    return max(1, min(2, os.cpu_count() or 1))


def register(subparsers) -> None:
    p = subparsers.add_parser("quickstart", help="the paper in miniature on Fashion-MNIST, offline, end to end")
    p.add_argument("--out", default="runs/quickstart", help="output folder (the teacher is cached here)")
    p.add_argument("--fast", action="store_true", help="tiny budget: checks every stage in about a minute")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=_default_jobs(), help="training runs side by side on the CPU")
    p.set_defaults(func=_run_quickstart_cli)

    p = subparsers.add_parser("paper-mini", help="all variants x seeds, mean +- std (the full small-scale protocol)")
    p.add_argument("--out", default="runs/paper-mini")
    p.add_argument("--results-dir", default=None, help="where results.md/json and plots go (default: --out)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=None, choices=[v.name for v in PAPER_MINI_VARIANTS])
    p.add_argument("--fast", action="store_true")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--jobs", type=int, default=_default_jobs(), help="training runs side by side on the CPU")
    p.set_defaults(func=_run_paper_mini_cli)


