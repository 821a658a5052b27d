"""End-to-end training on real Fashion-MNIST subsets with tiny models (in-process): a teacher trained without a
teacher, a Lift student distilled from its export, the baselines' adapters, NaN handling, and finetuning."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image

import vitkd_zoo  # noqa: F401
from vitkd_zoo.distill import DistillationLoss, NonFiniteLossError, find_checkpoints, run_training

ROOT = Path(__file__).resolve().parents[1]
FMNIST = ROOT / "training" / "configs" / "fmnist"
TINY = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2)
QUIET = dict(num_workers=0, log_with=[], progress=False, export_benchmark_seconds=0.05)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread avoids spin-wait stalls (10x slower steps)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    """A CaiT teacher of width 64 (2x the students) trained with plain CE (no teacher) and exported (the recipe's
    teacher is a ViT; a CaiT, as the paper's, exercises the class-attention teacher path)."""
    out = tmp_path_factory.mktemp("teacher")
    summary = run_training(FMNIST / "teacher.yaml", out, dict(
        QUIET, model="cait_xxs24_224", model_kwargs=dict(TINY, embed_dim=64, depth_token_only=1, init_values=0.1), epochs=3,
        max_train_samples=1536, max_eval_samples=400, global_batch_size=64, lr=2e-3, warmup_epochs=0, scale=[0.8, 1.0],
        reprob=0.0))
    assert summary["method"] == "cait+ce" and summary["teacher"] is None
    assert summary["top1"] > 20.0  # 10 classes: chance is 10 %
    return Path(summary["export_dir"])


def test_teacher_run_summary_and_export(teacher_dir):
    summary = json.loads((teacher_dir.parent / "summary.json").read_text())
    for key in ("top1", "top5", "epochs", "images_seen", "config", "best_top1", "eval_count", "history"):
        assert key in summary
    assert summary["eval_count"] == 400 and summary["images_seen"] == 3 * 1536
    assert summary["config"]["model"] == "cait_xxs24_224"
    model = timm.create_model(f"local-dir:{teacher_dir}", pretrained=True)
    assert model.num_classes == 10 and tuple(model.pretrained_cfg["mean"]) == (0.286,)
    lines = [json.loads(line) for line in (teacher_dir.parent / "metrics.jsonl").read_text().splitlines()]
    assert {r["event"] for r in lines} == {"train", "epoch"}


def test_lift_distillation_lowers_the_loss_and_beats_chance(teacher_dir, tmp_path):
    summary = run_training(FMNIST / "lift_softkd_fft.yaml", tmp_path, dict(
        QUIET, teacher=str(teacher_dir), model_kwargs=dict(TINY, lift_dim=64), epochs=3, max_train_samples=1536,
        max_eval_samples=400, global_batch_size=64, lr=2e-3, warmup_epochs=0, log_with=["tensorboard"], scale=[0.8, 1.0],
        checkpoints_total_limit=1, log_every_steps=8))
    assert summary["method"] == "lift+softkd+fft"
    assert summary["setup"]["student_feature"] == summary["setup"]["teacher_feature"] == [64, 7, 7]
    losses = [h["train_loss"] for h in summary["history"]]
    assert losses[-1] < losses[0] * 0.9, losses
    feats = [h["train_feat"] for h in summary["history"]]
    assert feats[-1] < feats[0], feats  # the student's lifted tokens move towards the teacher's
    assert summary["top1"] > 20.0 and summary["eval_count"] == 400
    assert len(find_checkpoints(tmp_path)) == 1  # rotated
    assert list((tmp_path / "logs").rglob("events.out.tfevents*"))
    export = timm.create_model(f"local-dir:{summary['export_dir']}", pretrained=True)
    assert type(export).__name__ == "VisionTransformerLift" and export.lift_dim == 64


@pytest.mark.parametrize("config, extra", [
    ("deit_softkd_pool_fft", {}),
    ("deit_softkd_projector", {}),
    ("widelast_softkd_mse", dict(model_kwargs=dict(TINY, wide_dim=64, wide_heads=2))),
])
def test_baseline_adapters_and_widelast_run(teacher_dir, tmp_path, config, extra):
    overrides = dict(QUIET, teacher=str(teacher_dir), model_kwargs=TINY, epochs=1, max_train_samples=256,
                     max_eval_samples=64, global_batch_size=64, export=True)
    overrides.update(extra)
    summary = run_training(FMNIST / f"{config}.yaml", tmp_path, overrides)
    assert summary["global_steps"] == 4 and summary["eval_count"] == 64
    history = summary["history"][0]
    assert history["train_feat"] > 0 and history["train_kd"] >= 0
    exported = timm.create_model(f"local-dir:{summary['export_dir']}", pretrained=True)
    # the projector / pooling are training-only: the export is the bare student
    assert not any("adapter" in k or "proj.weight" == k for k in exported.state_dict())
    if config == "deit_softkd_pool_fft":
        assert summary["setup"]["student_feature"] == [32, 7, 7] and summary["setup"]["teacher_feature"] == [64, 7, 7]


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    original = DistillationLoss.forward

    def poisoned(self, *args, **kwargs):
        total, terms = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 5:
            total = total * float("nan")
        return total, terms

    monkeypatch.setattr(DistillationLoss, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step 5.*Last good checkpoint: .*step_000000004"):
        run_training(FMNIST / "deit_scratch.yaml", tmp_path, dict(
            QUIET, model_kwargs=TINY, epochs=1, max_train_samples=512, global_batch_size=64,
            checkpoint_every_steps=2, checkpoints_total_limit=2, max_eval_samples=64))
    ckpts = find_checkpoints(tmp_path)
    assert [p.name for p in ckpts] == ["step_000000002", "step_000000004"]
    assert not (tmp_path / "summary.json").exists()
    failure = json.loads((tmp_path / "failure.json").read_text())
    assert failure["step"] == 5 and failure["last_good_checkpoint"].endswith("step_000000004")
    from safetensors.torch import load_file

    weights = load_file(str(ckpts[-1] / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in weights.values())
    # and the run resumes from it (the poisoned call count is past)
    summary = run_training(FMNIST / "deit_scratch.yaml", tmp_path, dict(
        QUIET, model_kwargs=TINY, epochs=1, max_train_samples=512, global_batch_size=64,
        checkpoint_every_steps=2, checkpoints_total_limit=2, max_eval_samples=64), resume=True)
    assert summary["resumed_from"].endswith("step_000000004") and summary["global_steps"] == 8


def _fmnist_folder(root: Path, classes=(0, 1, 5, 9), per_class=48) -> Path:
    from vitkd_zoo.data import load_fashion_mnist

    for split, offset in (("train", 0), ("val", 1000)):
        images, labels = load_fashion_mnist("train")
        for c in classes:
            (root / split / f"class_{c}").mkdir(parents=True, exist_ok=True)
            idx = np.flatnonzero(labels == c)[offset:offset + per_class]
            for i in idx:
                Image.fromarray(images[i]).save(root / split / f"class_{c}" / f"{i}.png")
    return root


def test_finetune_from_export_changes_the_head_and_trains(teacher_dir, tmp_path, monkeypatch, capsys):
    data = _fmnist_folder(tmp_path / "data")
    sys.path.insert(0, str(ROOT / "training"))
    monkeypatch.syspath_prepend(str(ROOT / "training"))
    import finetune

    out = tmp_path / "ft"
    rc = finetune.main(["--model", str(teacher_dir), "--config", str(FMNIST / "finetune.yaml"), "--output-dir",
                        str(out), "--dataset", "imagefolder", "--data-dir", str(data), "--epochs", "3",
                        "--global-batch-size", "32", "--lr", "1e-3", "--num-workers", "0", "--log-with", "none",
                        "--progress", "false", "--export-benchmark-seconds", "0.05"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_classes"] == 4 and summary["eval_count"] == 4 * 48
    assert summary["label_names"] == ["class_0", "class_1", "class_5", "class_9"]
    original = timm.create_model(f"local-dir:{teacher_dir}", pretrained=True)
    tuned = timm.create_model(f"local-dir:{summary['export_dir']}", pretrained=True)
    assert original.head.weight.shape[0] == 10 and tuned.head.weight.shape[0] == 4
    assert not torch.equal(original.blocks[0].attn.qkv.weight, tuned.blocks[0].attn.qkv.weight)  # trunk trained
    losses = [h["train_loss"] for h in summary["history"]]
    assert losses[-1] < losses[0] and summary["top1"] > 30.0  # 4 classes: chance 25 %
    assert summary["method"] == "cait+ce"


def test_gradient_accumulation_equals_the_full_batch_and_bf16_ema_run(tmp_path):
    from safetensors.torch import load_file

    base = dict(QUIET, model_kwargs=TINY, epochs=1, max_train_samples=256, max_eval_samples=64, global_batch_size=64,
                export=False, lr=2e-3, warmup_epochs=0)
    full = run_training(FMNIST / "deit_scratch.yaml", tmp_path / "full", base)
    accum = run_training(FMNIST / "deit_scratch.yaml", tmp_path / "accum", dict(base, grad_accum_steps=2))
    assert full["global_steps"] == accum["global_steps"] == 4 and accum["images_seen"] == full["images_seen"] == 256
    w_full = load_file(str(find_checkpoints(tmp_path / "full")[-1] / "model.safetensors"))
    w_acc = load_file(str(find_checkpoints(tmp_path / "accum")[-1] / "model.safetensors"))
    for k in w_full:  # same samples, same augmentations (per-sample seeds): 2 x 32 accumulated == 64
        torch.testing.assert_close(w_acc[k], w_full[k], rtol=1e-4, atol=1e-5)
    # bf16 autocast, clipping and an EMA-evaluated model (another precision in the same Python process)
    bf16 = run_training(FMNIST / "deit_scratch.yaml", tmp_path / "bf16", dict(
        base, mixed_precision="bf16", ema=True, ema_decay=0.5, eval_ema=True, clip_grad=1.0))
    assert np.isfinite(bf16["history"][0]["train_loss"]) and bf16["eval_count"] == 64


def test_webdataset_shards_through_timm_create_dataset(tmp_path):
    webdataset = pytest.importorskip("webdataset")
    import io

    from vitkd_zoo.data import load_fashion_mnist

    images, labels = load_fashion_mnist("test")
    root = tmp_path / "wds"
    root.mkdir()
    splits, start = {}, 0
    for split, shards, per_shard in (("train", 2, 64), ("validation", 1, 40)):
        names = []
        for s in range(shards):
            name = f"fmnist-{split}-{s:04d}.tar"
            with webdataset.TarWriter(str(root / name)) as sink:
                for i in range(start, start + per_shard):
                    buf = io.BytesIO()
                    Image.fromarray(images[i]).save(buf, format="PNG")
                    sink.write({"__key__": f"{i:06d}", "png": buf.getvalue(), "cls": str(int(labels[i])).encode()})
            start += per_shard
            names.append(name)
        splits[split] = dict(name=split, num_samples=shards * per_shard, filenames=names,
                             shard_lengths=[per_shard] * shards)
    (root / "_info.json").write_text(json.dumps({"name": "fmnist", "splits": splits}))
    summary = run_training(FMNIST / "deit_scratch.yaml", tmp_path / "out", dict(
        QUIET, model_kwargs=TINY, dataset="wds/fmnist", data_dir=str(root), train_split="train",
        eval_split="validation", num_classes=10, epochs=1, global_batch_size=32, export=False, mean=[0.286],
        std=[0.353]))
    assert summary["global_steps"] == 4 and summary["images_seen"] == 128 and summary["eval_count"] == 40


def test_teacher_from_name_plus_checkpoint_and_bf16_weights(teacher_dir, tmp_path):
    from safetensors.torch import save_file

    from vitkd_zoo.distill import FrozenTeacher, create_teacher

    ref = create_teacher(str(teacher_dir)).eval()  # export folder -> local-dir:
    save_file(ref.state_dict(), str(tmp_path / "teacher.safetensors"))
    config = json.loads((teacher_dir / "config.json").read_text())
    same = create_teacher(config["architecture"], checkpoint=str(tmp_path / "teacher.safetensors"),
                          **config["model_args"]).eval()
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(same(x), ref(x))
    bf16 = FrozenTeacher(same, layer=-1, dtype=torch.bfloat16)
    logits, feature = bf16(x.bfloat16())
    assert logits.dtype == torch.bfloat16 and feature.shape == (4, 64, 7, 7)
    torch.testing.assert_close(logits.float(), ref(x), atol=0.2, rtol=0.1)


def test_finetune_from_hf_hub_id(teacher_dir, tmp_path):
    """``--model hf-hub:org/name`` through a hand-built offline Hub cache (environment.md §5, option A)."""
    import hashlib
    import os
    import shutil
    import subprocess

    repo = "vitkd-test/fmnist-cait"
    commit = hashlib.sha1(repo.encode()).hexdigest()
    root = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    snapshot = root / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(teacher_dir / name, snapshot / name)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(tmp_path / "hub"), OMP_NUM_THREADS="1",
               PYTHONPATH=str(ROOT))
    out = tmp_path / "ft"
    proc = subprocess.run([sys.executable, str(ROOT / "training" / "finetune.py"), "--model", f"hf-hub:{repo}",
                           "--output-dir", str(out), "--config", str(FMNIST / "finetune.yaml"), "--epochs", "1",
                           "--max-train-samples", "128", "--max-eval-samples", "64", "--global-batch-size", "32",
                           "--num-workers", "0", "--log-with", "none", "--progress", "false", "--export", "false"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == f"hf-hub:{repo}" and summary["method"] == "cait+ce" and summary["eval_count"] == 64
    # loaded, not random: the trained teacher's accuracy carries over after one short epoch
    assert summary["history"][0]["top1"] > 15.0
