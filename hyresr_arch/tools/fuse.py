"""``hyresr fuse IN OUT``: fold HyReSR's re-parameterizable convs for deployment.

Reads IN safely (weights_only / safetensors), detects the variant, fuses, compares fused and
unfused output on a probe input (max abs difference printed; above ``--tol`` nothing is written),
and writes OUT as .safetensors (hyperparameters as JSON metadata, as traiNNer-redux does) or
.pth (``{"params": ...}``) by its extension. OUT is loaded back through spandrel before it is moved
into place. A checkpoint that is already fused is reported as such and written unchanged
(``--bench`` then times it alone). A .safetensors OUT is byte-identical for identical inputs.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

from .checkpoints import (CheckpointError, hyperparameter_metadata, load_descriptor, load_model, model_kind,
                          model_summary, save_state_dict)
from .deps import MissingDependency, require_all
from .files import same_file

PROBE_SIZE = (37, 29)  # not a multiple of the window: exercises the internal padding


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="HyReSR checkpoint (.pth/.pt/.ckpt/.safetensors)")
    parser.add_argument("output", metavar="OUT", help="fused checkpoint to write (.safetensors or .pth)")
    parser.add_argument("--tol", type=float, default=1e-4,
                        help="largest allowed fused-vs-unfused max abs difference (default 1e-4)")
    parser.add_argument("--bench", action="store_true",
                        help="also time unfused vs fused forward on CPU (64x64 input) and print the ratio")


def probe_input(in_ch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(1, in_ch, *PROBE_SIZE, generator=g)


@torch.inference_mode()
def fuse_and_check(model: torch.nn.Module) -> tuple[torch.nn.Module, float]:
    """A fused copy of ``model`` and the max abs difference between their outputs on a probe."""
    model = model.eval()
    fused = copy.deepcopy(model).fuse().eval()
    x = probe_input(model.in_ch)
    diff = (model(x) - fused(x)).abs().max().item()
    return fused, float(diff)


@torch.inference_mode()
def time_forward(model: torch.nn.Module, x: torch.Tensor, repeats: int = 5) -> float:
    model(x)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        model(x)
        best = min(best, time.perf_counter() - t)
    return best


def verify_loads(path: Path, reference: torch.nn.Module) -> None:
    """spandrel must load `path` to a fused HyReSR that matches `reference` on the probe."""
    desc, _ = load_descriptor(path)
    if desc.architecture.id != "HyReSR" or not getattr(desc.model, "is_fused", False):
        raise CheckpointError(f"{path}: written file did not load back as a fused HyReSR")
    x = probe_input(desc.input_channels)
    with torch.inference_mode():
        d = (desc.model.eval()(x) - reference(x)).abs().max().item()
    if d > 1e-6:
        raise CheckpointError(f"{path}: written file differs from the fused model (max abs {d:.2e})")


def main(args: argparse.Namespace) -> int:
    err = sys.stderr
    src, dst = Path(args.input), Path(args.output)
    if same_file(src, dst):
        print(f"hyresr fuse: refusing to overwrite the input {src}; give another OUT", file=err)
        return 2
    try:
        if model_kind(dst) in ("onnx", "ncnn"):
            raise CheckpointError(f"{dst}: use `hyresr export-{model_kind(dst)}` to write {model_kind(dst).upper()}")
        require_all(("spandrel", "torchvision"), "checking the fused file (loaded back through spandrel)")
        model, ckpt = load_model(src)
    except (CheckpointError, MissingDependency) as e:
        print(f"hyresr fuse: {e}", file=err)
        return 2
    summary = model_summary(model)
    print(f"{src}: HyReSR {summary['variant']} x{summary['scale']} "
          f"({summary['input_channels']}->{summary['output_channels']} ch), {summary['params']:,} params")
    if model.is_fused:
        print(f"{src}: already fused; writing it unchanged to {dst} (not fused twice)")
        fused, diff = model, 0.0
        if args.bench:
            x = torch.rand(1, model.in_ch, 64, 64)
            print(f"CPU forward 64x64 ({torch.get_num_threads()} threads): fused {time_forward(model, x) * 1e3:.1f} ms "
                  f"(no unfused timing to compare: the input is already fused; --bench the training "
                  f"checkpoint for the speedup)")
    else:
        fused, diff = fuse_and_check(model)
        n_fused = sum(p.numel() for p in fused.parameters())
        print(f"fused: {summary['params']:,} -> {n_fused:,} params; "
              f"max abs diff fused vs unfused on a {PROBE_SIZE[0]}x{PROBE_SIZE[1]} probe: {diff:.3e}")
        if not diff <= args.tol:
            print(f"hyresr fuse: difference {diff:.3e} exceeds --tol {args.tol:g}; nothing written", file=err)
            return 1
        if args.bench:
            x = torch.rand(1, model.in_ch, 64, 64)
            tu, tf = time_forward(model, x), time_forward(fused, x)
            print(f"CPU forward 64x64 ({torch.get_num_threads()} threads): unfused {tu * 1e3:.1f} ms, "
                  f"fused {tf * 1e3:.1f} ms, speedup x{tu / tf:.2f}")
    try:
        save_state_dict(fused.state_dict(), dst, hyperparameter_metadata(fused),
                        verify=lambda tmp: verify_loads(tmp, fused))
    except (CheckpointError, OSError) as e:
        print(f"hyresr fuse: cannot write {dst}: {e}", file=err)
        return 2
    print(f"wrote {dst}")
    return 0
