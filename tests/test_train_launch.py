"""The scripts under real launchers: 2-process DDP (gloo) on CPU with exact eval counts, and SIGKILL mid-epoch +
``--resume`` ending with the same weights as an uninterrupted run of the same seed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import timm
import torch

import vitkd_zoo  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
FMNIST = ROOT / "training" / "configs" / "fmnist"
TINY = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2)
TEACHER = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=64, depth=2, num_heads=2, depth_token_only=1,
               num_classes=10)

pytestmark = pytest.mark.slow


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


def _args(out: Path, **overrides) -> list[str]:
    """training/distill.py arguments: tiny Lift <- random-init tiny CaiT, Fashion-MNIST subsets."""
    base = dict(teacher="cait_xxs24_224", teacher_kwargs=json.dumps(TEACHER), teacher_pretrained="false",
                model_kwargs=json.dumps(dict(TINY, lift_dim=64)), num_workers=0, log_with="none", progress="false",
                export="false", global_batch_size=32)
    base.update(overrides)
    args = [str(ROOT / "training" / "distill.py"), "--config", str(FMNIST / "lift_softkd_fft.yaml"),
            "--output-dir", str(out)]
    for k, v in base.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args


def test_ddp_two_processes_eval_counts_every_image_once(tmp_path):
    out = tmp_path / "ddp"
    # accelerate 1.15's `launch --cpu --num_processes 2` starts ONE process (multi-CPU only through mpirun);
    # torchrun through --multi_gpu with ACCELERATE_USE_CPU=1 gives 2 processes on gloo (DistributedType.MULTI_CPU).
    cmd = [str(BIN / "accelerate"), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
           *_args(out, epochs=2, max_train_samples=256, max_eval_samples=101, repeated_aug=3, export="true",
                  export_benchmark_seconds=0.05)]
    proc = subprocess.run(cmd, env=dict(_env(), ACCELERATE_USE_CPU="1"), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["eval_count"] == 101  # 101 images over 2 processes x batch 16: padding dropped, none missing
    assert summary["images_seen"] == 2 * (256 // 32) * 32 and summary["global_steps"] == 2 * 8
    # the reported top-1 is exactly the single-process accuracy of the exported model on the same 101 images
    from timm.data import create_transform

    from vitkd_zoo.data import FashionMNIST

    model = timm.create_model(f"local-dir:{out / 'export'}", pretrained=True).eval()
    tf = create_transform((1, 28, 28), crop_pct=1.0, interpolation="bicubic", mean=(0.286,), std=(0.353,))
    ds = FashionMNIST("test", tf, max_samples=101)
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    y = torch.tensor([ds[i][1] for i in range(len(ds))])
    with torch.no_grad():
        top1 = (model(x).argmax(-1) == y).float().mean().item() * 100
    assert summary["top1"] == pytest.approx(top1, abs=1e-6)


def _final_weights(out: Path) -> dict:
    from safetensors.torch import load_file

    ckpts = sorted((out / "checkpoints").glob("step_*"))
    return load_file(str(ckpts[-1] / "model.safetensors")), ckpts[-1]


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path):
    # 512 images / batch 32 = 16 steps per epoch, 3 epochs; checkpoints every 5 steps; augmentation, drop-path,
    # Mixup/CutMix and EMA all draw random numbers, so an inexact RNG/sampler/EMA restore would show.
    common = dict(epochs=3, max_train_samples=512, max_eval_samples=64, checkpoint_every_steps=5,
                  checkpoints_total_limit=2, auto_augment="rand-m9-mstd0.5-inc1", reprob=0.25, repeated_aug=3,
                  drop_path_rate=0.1, mixup=0.2, cutmix=0.2, ema="true", ema_decay=0.9, seed=7)
    python = sys.executable
    ref = tmp_path / "reference"
    done = subprocess.run([python, *_args(ref, **common)], env=_env(), cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    run = tmp_path / "killed"
    proc = subprocess.Popen([python, *_args(run, **common)], env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    target = run / "checkpoints" / "step_000000010"
    while not target.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL and not (run / "summary.json").exists()
    killed_at = sorted(p.name for p in (run / "checkpoints").glob("step_*"))[-1]
    assert int(killed_at.split("_")[1]) % 16 != 0, f"killed at an epoch boundary ({killed_at}): not mid-epoch"

    resumed = subprocess.run([python, *_args(run, **common), "--resume"], env=_env(), cwd=ROOT, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["resumed_from"].endswith(killed_at)
    reference = json.loads((ref / "summary.json").read_text())
    assert summary["images_seen"] == reference["images_seen"] and summary["global_steps"] == reference["global_steps"]
    (w_ref, c_ref), (w_run, c_run) = _final_weights(ref), _final_weights(run)
    assert w_ref.keys() == w_run.keys()
    for k in w_ref:
        assert torch.equal(w_ref[k], w_run[k]), k
    # EMA is restored too (custom_checkpoint_2 = ModelEmaV3), and so are the metrics
    ema_ref = torch.load(c_ref / "custom_checkpoint_2.pkl", weights_only=False)
    ema_run = torch.load(c_run / "custom_checkpoint_2.pkl", weights_only=False)
    for k in ema_ref:
        assert torch.equal(ema_ref[k], ema_run[k]), k
    assert summary["top1"] == reference["top1"]
