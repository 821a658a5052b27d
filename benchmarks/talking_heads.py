#!/usr/bin/env python
"""CaiT talking-heads attention: timm's layer vs vitkd_zoo's exact fused-SDPA rewrite, timed in the same run.

    python benchmarks/talking_heads.py --device cuda            # the issue's setting: B 512, N 197, C 384, 8 heads, bf16
    python benchmarks/talking_heads.py --device cpu --batch 16  # CPU smoke run (the rewrite does 8x the attention
                                                                # arithmetic: expect it slower on a CPU)

Prints one JSON line (ms per call, ratio, relative error) and names the device.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from timm.models.cait import TalkingHeadAttn

from vitkd_zoo.distill.fast_cait import FusedTalkingHeadAttn


def _time(fn, x, iters: int, device: str) -> float:
    for _ in range(3):
        fn(x)
    times = []
    for _ in range(iters):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(x)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--tokens", type=int, default=197)
    parser.add_argument("--width", type=int, default=384)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args()
    torch.manual_seed(0)
    layer = TalkingHeadAttn(args.width, num_heads=args.heads, qkv_bias=True).eval().to(args.device)
    fused = FusedTalkingHeadAttn(layer)
    x = torch.randn(args.batch, args.tokens, args.width, device=args.device)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    with torch.no_grad(), torch.autocast(args.device, dtype=dtype, enabled=args.device == "cuda"):
        ref, out = layer(x).float(), fused(x).float()
        timm_ms = _time(layer, x, args.iters, args.device)
        fused_ms = _time(fused, x, args.iters, args.device)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(json.dumps(dict(device=name, torch=torch.__version__, batch=args.batch, tokens=args.tokens,
                          width=args.width, heads=args.heads, dtype=str(dtype), timm_ms=round(timm_ms, 3),
                          fused_ms=round(fused_ms, 3), speedup=round(timm_ms / fused_ms, 3),
                          rel_error=float((out - ref).abs().max() / ref.abs().max()))))


if __name__ == "__main__":
    main()
