#!/usr/bin/env python
"""Throughput of vitkd_zoo's distillation step against a plain timm training loop, measured in the same run.

Both sides run the same teacher, student, batch, optimizer (timm AdamW) and precision, and the same losses
(CE with label smoothing + SoftKD + spatial-FFT feature MSE, Lift student <- CaiT teacher):

* ours  = ``vitkd_zoo.distill.train_step`` with ``Accelerator``, ``DistillationModel``, ``FrozenTeacher`` and
  ``DistillationLoss`` (the trainer's inner step, NaN check included);
* plain = a hand-written loop: ``teacher.forward_intermediates`` under ``no_grad``, ``student.forward_distill``,
  the loss terms written inline, ``backward``, ``step``.

Rounds alternate between the two (median step time per side), so machine noise hits both. CPU prints
``overhead_vs_plain_loop=<plain img/s / ours img/s ... i.e. our time / plain time>`` last (target <= 1.05). On CUDA it
prints the card, absolute img/s, and also compares against the plain loop under ``torch.compile``
(``ratio_vs_timm_compiled``, our compiled step's time over the compiled plain loop's).

    python benchmarks/distill_step.py                      # CPU defaults: small Lift <- small CaiT, 32 px
    python benchmarks/distill_step.py --preset paper       # DeiT-Tiny Lift <- CaiT-S24 at 224 px (GPU)
"""
from __future__ import annotations

import argparse
import statistics
import time

import timm
import torch
import torch.nn.functional as F

import vitkd_zoo  # noqa: F401
from vitkd_zoo.distill import DistillationLoss, DistillationModel, FrozenTeacher, train_step

PRESETS = {
    # CPU-sized: 32 px / patch 4 (64 tokens), student 96 -> lifted 192, teacher CaiT width 192
    "small": dict(
        student=dict(img_size=32, patch_size=4, embed_dim=96, depth=6, num_heads=3, lift_dim=192, num_classes=100),
        teacher=dict(img_size=32, patch_size=4, embed_dim=192, depth=6, num_heads=4, num_classes=100),
        input_size=(3, 32, 32), batch=64),
    # the paper's pair: DeiT-Tiny Lift (192 -> 384) <- CaiT-S24, 224 px
    "paper": dict(student=dict(num_classes=1000), teacher=dict(num_classes=1000), input_size=(3, 224, 224), batch=256),
}


def build(preset: dict, device: torch.device):
    torch.manual_seed(0)
    student = timm.create_model("deit_tiny_lift", **preset["student"]).to(device)
    teacher = timm.create_model("cait_s24_224" if preset is PRESETS["paper"] else "cait_xxs24_224",
                                **preset["teacher"]).to(device).eval().requires_grad_(False)
    return student, teacher


def make_ours(preset, device, dtype, compile_: bool):
    from accelerate import Accelerator
    from timm.optim import create_optimizer_v2

    student, teacher_model = build(preset, device)
    accelerator = Accelerator(mixed_precision={torch.bfloat16: "bf16", torch.float32: "no"}[dtype],
                              cpu=device.type == "cpu")
    teacher = FrozenTeacher(teacher_model, layer=-1, with_feature=True, compile=compile_)
    module = DistillationModel(student, "distill", with_feature=True)
    if compile_:
        module = torch.compile(module)
    loss_fn = DistillationLoss(alpha=0.9, temperature=1.0, feature_weight=0.2, feature_loss="fft",
                               label_smoothing=0.1)
    optimizer = create_optimizer_v2(module, opt="adamw", lr=1e-4, weight_decay=0.05)
    module, optimizer = accelerator.prepare(module, optimizer)

    def step(x, y):
        train_step(accelerator, module, teacher, loss_fn, optimizer, x, y)

    return step


def make_plain(preset, device, dtype, compile_: bool):
    from timm.optim import create_optimizer_v2

    student, teacher = build(preset, device)
    optimizer = create_optimizer_v2(student, opt="adamw", lr=1e-4, weight_decay=0.05)
    n_blocks = len(teacher.blocks)

    def loss_fn(x, y):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            with torch.no_grad():
                final, inter = teacher.forward_intermediates(x, indices=[n_blocks - 1], norm=False)
                t_logits, t_feat = teacher.forward_head(final), inter[0]
            logits, feat = student.forward_distill(x)
        logp = F.log_softmax(logits.float(), -1)
        ce = (0.9 * -logp.gather(1, y[:, None]).squeeze(1) - 0.1 * logp.mean(-1)).mean()
        kd = F.kl_div(logp, F.log_softmax(t_logits.float(), -1), reduction="batchmean", log_target=True)
        fs, ft = torch.fft.rfft2(feat.float(), norm="ortho"), torch.fft.rfft2(t_feat.float(), norm="ortho")
        feat_loss = F.mse_loss(torch.stack((fs.real, fs.imag), -1), torch.stack((ft.real, ft.imag), -1))
        return 0.1 * ce + 0.9 * kd + 0.2 * feat_loss

    compiled = torch.compile(loss_fn) if compile_ else loss_fn

    def step(x, y):
        loss = compiled(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def timed(step, x, y, n: int, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(n):
        step(x, y)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n


def compare(sides: dict, x, y, rounds: int, steps: int, warmup: int, device) -> dict[str, float]:
    for step in sides.values():
        timed(step, x, y, warmup, device)
    times = {name: [] for name in sides}
    for r in range(rounds):
        order = list(sides) if r % 2 == 0 else list(reversed(sides))
        for name in order:
            times[name].append(timed(sides[name], x, y, steps, device))
    return {name: x.shape[0] / statistics.median(ts) for name, ts in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="steps per round and side")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default 1: on a shared machine 2+ threads spin-wait and swamp the comparison)")
    parser.add_argument("--no-compile", action="store_true", help="CUDA: skip the torch.compile comparison")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    preset = PRESETS[args.preset or ("paper" if cuda else "small")]
    batch = args.batch or preset["batch"]
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.precision or ("bf16" if cuda else "fp32")]
    rounds, steps, warmup = args.rounds or (5 if cuda else 11), args.steps or (10 if cuda else 2), args.warmup or (
        5 if cuda else 2)
    if args.threads or not cuda:
        torch.set_num_threads(args.threads or 1)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *preset["input_size"], generator=g).to(device)
    y = torch.randint(0, preset["student"]["num_classes"], (batch,), generator=g).to(device)
    name = torch.cuda.get_device_name(device) if cuda else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}, timm {timm.__version__}; preset "
          f"{args.preset or ('paper' if cuda else 'small')}, batch {batch}, {str(dtype).split('.')[-1]}; "
          f"{rounds} rounds x {steps} steps per side (median)")
    speed = compare({"plain": make_plain(preset, device, dtype, False), "ours": make_ours(preset, device, dtype, False)},
                    x, y, rounds, steps, warmup, device)
    print(f"plain timm loop: {speed['plain']:.1f} img/s")
    print(f"vitkd_zoo distill step: {speed['ours']:.1f} img/s")
    overhead = speed["plain"] / speed["ours"]
    if cuda and not args.no_compile:
        torch._dynamo.reset()
        compiled = compare({"plain_compiled": make_plain(preset, device, dtype, True),
                            "ours_compiled": make_ours(preset, device, dtype, True)}, x, y, rounds, steps,
                           max(warmup, 3), device)
        print(f"plain timm loop, torch.compile: {compiled['plain_compiled']:.1f} img/s")
        print(f"vitkd_zoo distill step, torch.compile: {compiled['ours_compiled']:.1f} img/s")
        print(f"peak memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        print(f"overhead_vs_plain_loop={overhead:.3f}")
        print(f"ratio_vs_timm_compiled={compiled['plain_compiled'] / speed['ours']:.3f} "
              f"(compiled plain loop img/s / our eager img/s; ours compiled: "
              f"{compiled['plain_compiled'] / compiled['ours_compiled']:.3f})")
    else:
        print(f"overhead_vs_plain_loop={overhead:.3f}")


if __name__ == "__main__":
    main()
