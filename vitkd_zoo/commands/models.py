"""``vitkd-zoo models``: the registered students with params, GMACs and CPU throughput next to DeiT-Tiny."""
from __future__ import annotations

import argparse
import statistics
import time

import torch

BASELINE = "deit_tiny_patch16_224"


def count_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gmacs(model: torch.nn.Module, input_size: tuple[int, int, int]) -> float:
    """Multiply-accumulates per image (attention matmuls included), via torch's FlopCounterMode (FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    # Fused SDPA kernels are not counted on CPU: run timm's explicit attention path while counting.
    fused = [m for m in model.modules() if getattr(m, "fused_attn", False)]
    for m in fused:
        m.fused_attn = False
    try:  # with grad enabled: FlopCounterMode fails on CaiT's class-attention under no_grad ("Expected gradient…")
        with torch.enable_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_size))
    finally:
        for m in fused:
            m.fused_attn = True
    return counter.get_total_flops() / 2e9


def images_per_second(models: dict, input_size, batch_size: int = 16, seconds: float = 2.0, rounds: int = 3) -> dict:
    """Median img/s per model, measured in interleaved rounds so machine noise hits every model alike."""
    x = torch.randn(batch_size, *input_size)
    samples = {name: [] for name in models}
    with torch.inference_mode():
        for model in models.values():
            model(x)  # warm-up
        for _ in range(rounds):
            for name, model in models.items():
                done, start = 0, time.perf_counter()
                while time.perf_counter() - start < seconds / rounds or done == 0:
                    model(x)
                    done += batch_size
                samples[name].append(done / (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in samples.items()}


def model_table(names, batch_size: int = 16, seconds: float = 2.0, **kwargs) -> list[dict]:
    """One row per model: params, GMACs and CPU img/s, measured in this process."""
    import timm

    import vitkd_zoo  # noqa: F401

    models = {name: timm.create_model(name, **kwargs).eval() for name in names}
    first = next(iter(models.values()))
    input_size = tuple(first.pretrained_cfg["input_size"]) if not kwargs.get("img_size") else (
        kwargs.get("in_chans", 3), kwargs["img_size"], kwargs["img_size"])
    speed = images_per_second(models, input_size, batch_size, seconds)
    return [dict(model=name, params=count_params(m), gmacs=round(count_gmacs(m, input_size), 4),
                 img_per_s=round(speed[name], 1)) for name, m in models.items()]


def format_table(rows: list[dict], baseline: str = BASELINE) -> str:
    base = next((r for r in rows if r["model"] == baseline), rows[0])
    lines = ["| model | params | GMACs | CPU img/s | params vs DeiT-Tiny | speed vs DeiT-Tiny |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params']:,} | {r['gmacs']:.3f} | {r['img_per_s']:.1f} | "
                     f"{r['params'] / base['params']:.3f}x | {r['img_per_s'] / base['img_per_s']:.2f}x |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads) if args.threads else None
    names = [BASELINE, "deit_tiny_lift", "deit_tiny_widelast"] + list(args.extra)
    print(f"Measuring {', '.join(names)} at 224 px on CPU (batch {args.batch_size}, {args.seconds:.0f} s each)…")
    print(format_table(model_table(names, args.batch_size, args.seconds)))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("models", help="params / GMACs / CPU img/s of the students next to DeiT-Tiny")
    p.add_argument("extra", nargs="*", help="more timm model names to include")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seconds", type=float, default=2.0, help="timing window per model")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.set_defaults(func=run)
