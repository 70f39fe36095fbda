"""GPU precision check (issue 5): fp16/bf16 inference vs fp32 for every variant, and short AMP
training runs (bf16, and fp16 with a GradScaler as traiNNer-redux/neosr use) with channels_last.

    python benchmarks/gpu_precision.py --out DIR     (needs CUDA; writes DIR/gpu_precision.json)
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hyresr_arch import BUILDERS  # noqa: E402


def inference(dev: str) -> list[dict]:
    rows = []
    for name, build in BUILDERS.items():
        torch.manual_seed(0)
        model = build(scale=4).to(dev).eval()
        with torch.no_grad():  # non-trivial weights: perturb zero/near-zero inits
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.02)
        x = torch.rand(2, 3, 96, 80, device=dev)
        with torch.no_grad():
            ref = model(x)
            for dtype in (torch.float16, torch.bfloat16):
                half = model.to(dtype)
                out = half(x.to(dtype)).float()
                cl = half.to(memory_format=torch.channels_last)(x.to(dtype).to(memory_format=torch.channels_last)).float()
                auto_model = model.float()
                with torch.autocast("cuda", dtype=dtype):
                    auto = auto_model(x).float()
                rows.append(dict(model=name, dtype=str(dtype), finite=bool(torch.isfinite(out).all()),
                                 max_abs=(out - ref).abs().max().item(), mean_abs=(out - ref).abs().mean().item(),
                                 channels_last_max_abs=(cl - ref).abs().max().item(),
                                 autocast_max_abs=(auto - ref).abs().max().item()))
                model = model.float().to(memory_format=torch.contiguous_format)
        print(rows[-2:], flush=True)
    return rows


def amp_training(dev: str, steps: int) -> list[dict]:
    rows = []
    for name in ("hyresr_tiny", "hyresr_light", "hyresr"):
        for dtype in (torch.bfloat16, torch.float16):
            torch.manual_seed(0)
            model = BUILDERS[name](scale=4).to(dev).to(memory_format=torch.channels_last).train()
            opt = torch.optim.AdamW(model.parameters(), lr=5e-4)
            scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16)
            g = torch.Generator(device=dev).manual_seed(0)
            losses, t0 = [], time.time()
            for _ in range(steps):
                hr = torch.nn.functional.interpolate(torch.rand(8, 3, 32, 32, device=dev, generator=g), size=256,
                                                     mode="bicubic").clamp(0, 1)
                lr = torch.nn.functional.interpolate(hr, scale_factor=0.25, mode="bicubic", antialias=True)
                with torch.autocast("cuda", dtype=dtype):
                    loss = torch.nn.functional.l1_loss(model(lr.contiguous(memory_format=torch.channels_last)), hr)
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                losses.append(loss.item())
            torch.cuda.synchronize()
            finite = all(math.isfinite(v) for v in losses)
            params_finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
            rows.append(dict(model=name, dtype=str(dtype), steps=steps, first_loss=losses[0], last_loss=losses[-1],
                             losses_finite=finite, params_finite=params_finite,
                             skipped_steps_scale=float(scaler.get_scale()) if scaler.is_enabled() else None,
                             loads=[[round(v, 3) for v in load.tolist()] for load in model.moe_loads()[:2]],
                             seconds=round(time.time() - t0, 1)))
            print(rows[-1], flush=True)
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="benchmarks/results/gpu")
    ap.add_argument("--steps", type=int, default=100)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 1
    dev = "cuda"
    result = dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                  inference=inference(dev), amp_training=amp_training(dev, args.steps))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    Path(args.out, "gpu_precision.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
