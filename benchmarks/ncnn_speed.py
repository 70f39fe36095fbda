"""CPU speed of the NCNN runtime vs PyTorch vs onnxruntime on the same image, in the same run:
the fused model, one thread each, fp32, repeats interleaved (so background load hits all three
alike); prints each runtime's median and its ratio to PyTorch.

    python benchmarks/ncnn_speed.py --models hyresr_tiny,hyresr_light --size 128 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
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
from hyresr_arch.tools import export_ncnn, export_onnx  # noqa: E402
from hyresr_arch.tools.runners import ort_session  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="hyresr_tiny,hyresr_light")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--size", type=int, default=128, help="input height and width")
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    print("| model | input | PyTorch s | onnxruntime s | ncnn s | ort / PyTorch | ncnn / PyTorch | ncnn max abs diff |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models.split(","):
        torch.manual_seed(0)
        model = perturbed(H.BUILDERS[name](scale=args.scale)).fuse()
        x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
        with tempfile.TemporaryDirectory() as tmp:
            export_onnx.export_model(model, Path(tmp) / "m.onnx", verify_sizes=[(1, 24, 20)], log=lambda *_: None)
            export_ncnn.export_model(model, Path(tmp) / "m", verify_sizes=[(24, 20)], log=lambda *_: None)
            sess = ort_session(Path(tmp) / "m.onnx")
            import onnxruntime as ort  # noqa: F401  (threads: one intra-op thread below)

            opts = sess.get_session_options()
            opts.intra_op_num_threads = opts.inter_op_num_threads = 1
            sess = type(sess)(str(Path(tmp) / "m.onnx"), opts, providers=["CPUExecutionProvider"])
            net = export_ncnn.ncnn_net(Path(tmp) / "m.param", Path(tmp) / "m.bin", threads=1)
            with torch.inference_mode():
                ref = model(x)
            runs = {
                "torch": lambda: model(x),
                "ort": lambda: sess.run(None, {"input": x.numpy()}),
                "ncnn": lambda: export_ncnn.ncnn_run(net, x),
            }
            diff = float(abs(export_ncnn.ncnn_run(net, x) - ref.numpy()).max())
            times = {k: [] for k in runs}
            with torch.inference_mode():
                for fn in runs.values():
                    fn()  # warm-up
                for _ in range(args.repeats):
                    for k, fn in runs.items():
                        t = time.perf_counter()
                        fn()
                        times[k].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        print(f"| {name} x{args.scale} | {args.size}x{args.size} | {med['torch']:.3f} | {med['ort']:.3f} | "
              f"{med['ncnn']:.3f} | {med['ort'] / med['torch']:.2f} | {med['ncnn'] / med['torch']:.2f} | {diff:.1e} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
