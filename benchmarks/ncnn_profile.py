"""Per-layer CPU time of an NCNN graph, with the ``ncnn`` package from PyPI (no NCNN_BENCHMARK build):
one extractor, each layer's output extracted in file order, so each extract runs exactly that layer
(its inputs are already there). Prints the time per layer type and the slowest layers, and the
whole graph timed in one extract beside the sum (they agree when the per-layer calls add little).

    python benchmarks/ncnn_profile.py --model hyresr_tiny --size 64         # export (perturbed), then profile
    python benchmarks/ncnn_profile.py --param m.param --bin m.bin --size 64
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import hyresr_arch as H  # noqa: E402
from conftest import perturbed  # noqa: E402
from hyresr_arch.tools import export_ncnn  # noqa: E402


def layers(param: Path) -> list[tuple[str, str, list[str], str]]:
    """(type, name, output blobs, params) of every layer but the input, in file order."""
    out = []
    for line in param.read_text().splitlines()[2:]:
        f = line.split()
        if not f or f[0] == "Input":
            continue
        n_in, n_out = int(f[2]), int(f[3])
        out.append((f[0], f[1], f[4 + n_in : 4 + n_in + n_out], " ".join(f[4 + n_in + n_out :])))
    return out


def profile(param: Path, bin_path: Path, size: int, in_ch: int = 3, repeats: int = 3) -> tuple[float, float, list]:
    """(whole-graph seconds, sum of the per-layer seconds, [(seconds, type, name, params)]); the
    fastest of ``repeats`` passes each."""
    import ncnn

    net = export_ncnn.ncnn_net(param, bin_path, threads=1)
    x = ncnn.Mat(np.random.default_rng(0).random((in_ch, size, size), dtype=np.float32))
    graph = layers(param)
    whole, best = float("inf"), None
    for _ in range(repeats):
        with net.create_extractor() as ex:
            ex.input(export_ncnn.INPUT_BLOB, x.clone())
            t = time.perf_counter()
            ex.extract(export_ncnn.OUTPUT_BLOB)
            whole = min(whole, time.perf_counter() - t)
        per = []
        with net.create_extractor() as ex:
            ex.input(export_ncnn.INPUT_BLOB, x.clone())
            for typ, name, outs, params in graph:
                t = time.perf_counter()
                ret, _ = ex.extract(outs[0], 1)  # type 1: no unpacking of the returned blob
                per.append((time.perf_counter() - t, typ, name, params))
                if ret != 0:
                    raise RuntimeError(f"{param}: ncnn could not run layer {name} ({typ}), error {ret}")
        if best is None or sum(p[0] for p in per) < sum(p[0] for p in best):
            best = per
    return whole, sum(p[0] for p in best), best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="hyresr_tiny", help="a variant to export (weights perturbed), x4")
    p.add_argument("--param", type=Path, help="profile these files instead")
    p.add_argument("--bin", type=Path)
    p.add_argument("--size", type=int, default=64, help="input height and width")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        if args.param:
            param, bin_path = args.param, args.bin or args.param.with_suffix(".bin")
        else:
            torch.manual_seed(0)
            model = perturbed(H.BUILDERS[args.model](scale=4))
            export_ncnn.export_model(model, Path(tmp) / "m", verify_sizes=[(24, 20)], log=lambda *_: None)
            param, bin_path = Path(tmp) / "m.param", Path(tmp) / "m.bin"
        whole, total, per = profile(param, bin_path, args.size)
    print(f"{param.name if args.param else args.model}, {args.size}x{args.size}, one thread: whole graph {whole:.3f} s, "
          f"sum of {len(per)} layers {total:.3f} s")
    by_type, count = collections.Counter(), collections.Counter()
    for sec, typ, _, _ in per:
        by_type[typ] += sec
        count[typ] += 1
    print("\n| layer type | layers | s | share |\n| --- | --- | --- | --- |")
    for typ, sec in by_type.most_common():
        print(f"| {typ} | {count[typ]} | {sec:.4f} | {sec / total:.1%} |")
    print("\n| ms | type | name | params |\n| --- | --- | --- | --- |")
    for sec, typ, name, params in sorted(per, reverse=True)[: args.top]:
        print(f"| {sec * 1e3:.1f} | {typ} | {name} | `{params[:70]}` |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
