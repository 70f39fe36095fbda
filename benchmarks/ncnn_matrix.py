"""Variant x option matrix of the NCNN export: for each configuration, ``hyresr export-ncnn``'s own
path (trace in ``hyresr_arch.tools.ncnn_graph.ncnn_graph()``, pnnx, ncnn runtime) and the max abs difference to PyTorch fp32 at
sizes other than the traced one, or the reason the command refuses it. Weights are perturbed
(``tests/conftest.perturbed``) so every branch carries signal.

    python benchmarks/ncnn_matrix.py                       # every row (the heavy variants take minutes each)
    python benchmarks/ncnn_matrix.py --only hyresr_tiny    # rows whose variant matches
    python benchmarks/ncnn_matrix.py --out docs/ncnn_matrix.md
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import hyresr_arch as H  # noqa: E402
from conftest import perturbed  # noqa: E402
from hyresr_arch.tools import export_ncnn  # noqa: E402

# (variant, options): every option on hyresr_tiny, the default x4 (and DySample) on every variant,
# hyresr_rest at its own scale (x1) too
ROWS = [
    ("hyresr_tiny", dict(scale=4)),
    ("hyresr_tiny", dict(scale=4, upsampler="dysample")),
    ("hyresr_tiny", dict(scale=1)),
    ("hyresr_tiny", dict(scale=2)),
    ("hyresr_tiny", dict(scale=3)),
    ("hyresr_tiny", dict(scale=2, upsampler="dysample")),
    ("hyresr_tiny", dict(scale=3, upsampler="dysample")),
    ("hyresr_tiny", dict(scale=4, in_ch=1, out_ch=1)),
    ("hyresr_tiny", dict(scale=4, in_ch=4, out_ch=4)),
    ("hyresr_tiny", dict(scale=8)),
    ("hyresr_light", dict(scale=4)),
    ("hyresr_light", dict(scale=2, upsampler="dysample")),
    ("hyresr", dict(scale=4)),
    ("hyresr_sr", dict(scale=4)),
    ("hyresr_rest", dict(scale=1)),
    ("hyresr_rest", dict(scale=4, upsampler="dysample")),
]


def run_row(name: str, options: dict, fp16: bool = False) -> dict:
    model = perturbed(H.BUILDERS[name](**options))
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            res = export_ncnn.export_model(model, Path(tmp) / "m", fp16=fp16, log=lambda *_: None)
        except export_ncnn.ExportError as err:
            return {"result": "refused", "reason": str(err), "seconds": time.perf_counter() - t0}
    return {"result": "ok", "max_error": res["max_error"], "errors": res["errors"], "layers": res["layers"],
            "seconds": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help="comma-separated variant names")
    p.add_argument("--fp16", action="store_true", help="fp16 weights (verified with ncnn's fp16 storage)")
    p.add_argument("--out", default=None, help="also write the table (markdown) to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    only = set(args.only.split(",")) if args.only else None
    lines = ["| variant | options | result | max abs diff (fp32 PyTorch) | sizes checked | NCNN layers | export s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    print("\n".join(lines), flush=True)
    for name, options in ROWS:
        if only and name not in only:
            continue
        r = run_row(name, options, args.fp16)
        opts = ", ".join(f"{k}={v}" for k, v in options.items())
        if r["result"] == "ok":
            line = (f"| {name} | {opts} | exports | {r['max_error']:.2e} | {', '.join(r['errors'])} | {r['layers']} | "
                    f"{r['seconds']:.0f} |")
        else:
            line = f"| {name} | {opts} | refused: {r['reason']} | | | | {r['seconds']:.0f} |"
        lines.append(line)
        print(line, flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
