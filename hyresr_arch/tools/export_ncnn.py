"""``hyresr export-ncnn IN OUT [--fp16]``: NCNN ``.param`` / ``.bin`` files, for Upscayl, chaiNNer's NCNN
nodes, the ``*-ncnn-vulkan`` command-line tools and Android apps.

The fused model is traced inside ``hyresr_arch.tools.ncnn_graph.ncnn_graph()``: the network computes the same function
with operations NCNN has (tensors of at most four dimensions besides the batch, constant pads and
crops whose ends are shape expressions, the MoE's one-hot without argmax, DySample's sampling grid
without ``arange``; a test holds it equal to the main forward for every variant). pnnx (PyPI) turns
the trace into NCNN layers; it is given a second trace size far enough from the first that every
window count differs, so every size stays a runtime expression. The input and output blobs are
renamed ``data`` and ``output`` (the names realesrgan-ncnn-vulkan, Upscayl and chaiNNer use). The
result is then run with the ``ncnn`` Python package at sizes other than the traced one and compared
with PyTorch (fp32): the maximum absolute error is printed, and a file over the limit is not written.

``--fp16`` stores the weights in half precision (half the size; NCNN computes in fp32 or fp16 as the
device chooses); it is verified with NCNN's fp16 storage switched on.

One image at a time (NCNN has no batch), H, W >= 2**levels (8 for three levels, 32 for
hyresr_rest), like the ONNX graph. The graph needs an NCNN with shape expressions in Reshape and
Crop (2025 or later; the ``ncnn`` package from PyPI has them). Needs pnnx and ncnn
(``pip install "hyresr[ncnn]"``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from .checkpoints import CheckpointError, load_model, model_summary, onnx_minimum_size
from .deps import MissingDependency, require, require_all
from .files import same_file

EXPORT_SIZE = (36, 44)  # traced size: not a multiple of 8 (the network's own padding is in the graph)
VERIFY_SIZES = ((24, 20), (17, 33), (48, 40))  # (H, W), none the traced size; raised to the minimum
FP32_ATOL = 1e-2  # measured: about 1e-6 (issue 22's limit is 1e-2)
FP16_ATOL = 5e-2  # fp16 weights and activations in storage, against the fp32 PyTorch model
INPUT_BLOB, OUTPUT_BLOB = "data", "output"


class ExportError(RuntimeError):
    pass


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", metavar="IN", help="HyReSR checkpoint (.pth/.pt/.ckpt/.safetensors)")
    parser.add_argument("output", metavar="OUT",
                        help="NAME.param (or NAME): writes NAME.param and NAME.bin")
    parser.add_argument("--fp16", action="store_true", help="store the weights in half precision")


def output_paths(out: str | os.PathLike[str]) -> tuple[Path, Path]:
    """(NAME.param, NAME.bin) for OUT given as NAME.param or NAME."""
    out = Path(out)
    stem = out.with_suffix("") if out.suffix.lower() == ".param" else out
    return stem.with_name(stem.name + ".param"), stem.with_name(stem.name + ".bin")


def refusal(model: torch.nn.Module) -> str | None:
    """Why this model cannot be exported to NCNN, or None. (Every HyReSR variant and option
    converts: see benchmarks/ncnn_matrix.py; the batch is 1 in NCNN.)"""
    if not hasattr(model, "pad_multiple"):
        return "not a HyReSR network"
    return None


def trace_sizes(model: torch.nn.Module) -> tuple[tuple[int, int], tuple[int, int]]:
    """The two sizes pnnx traces at. pnnx treats every size that is equal in both traces as a
    constant, so the second is larger by window * 2**levels pixels: then every stage's padded size
    and window count differ between the two (by at least two windows at the lowest level)."""
    m = onnx_minimum_size(model)
    h, w = max(EXPORT_SIZE[0], m), max(EXPORT_SIZE[1], m)
    d = int(model.hyperparameters.get("window", 8)) * int(model.pad_multiple)
    return (h, w), (h + d, w + d)


def _pnnx_exec() -> str:
    pnnx = require("pnnx", "NCNN export")
    path = getattr(pnnx, "EXEC_PATH", None)
    if not path or not Path(path).is_file():
        raise ExportError(f"the pnnx package has no converter executable ({path}); reinstall pnnx")
    return path


def _rename_blobs(param: Path) -> None:
    """pnnx names the input and output blobs in0 / out0; the NCNN upscalers look for data / output."""
    lines = param.read_text().splitlines()
    names = {"in0": INPUT_BLOB, "out0": OUTPUT_BLOB}
    out = lines[:2]
    for line in lines[2:]:
        parts = line.split()
        n_in, n_out = int(parts[2]), int(parts[3])
        blobs = [names.get(b, b) for b in parts[4 : 4 + n_in + n_out]]
        name = INPUT_BLOB if parts[0] == "Input" else parts[1]
        out.append(" ".join([f"{parts[0]:<24}", f"{name:<24}", parts[2], parts[3], *blobs, *parts[4 + n_in + n_out :]]))
    param.write_text("\n".join(out) + "\n")


def layer_types(param: Path) -> list[str]:
    return [line.split()[0] for line in param.read_text().splitlines()[2:] if line.strip()]


def unconverted_layers(param: Path) -> list[str]:
    """Layers pnnx left in PyTorch form (``pnnx.Expression``, ``torch.argmax``, ``F.pad``, ...),
    which no NCNN runtime has."""
    return sorted({t for t in layer_types(param) if "." in t or "::" in t})


def _run_pnnx(net: torch.nn.Module, x1: torch.Tensor, x2: torch.Tensor, work: Path, fp16: bool) -> Path:
    from hyresr_arch.tools.ncnn_graph import ncnn_graph

    exe = _pnnx_exec()
    pt = work / "model.pt"
    with ncnn_graph(), torch.no_grad(), warnings_ignored():
        traced = torch.jit.trace(net, (x1,), check_trace=False)
    traced.save(str(pt))
    shape = lambda x: "[" + ",".join(str(int(s)) for s in x.shape) + "]f32"  # noqa: E731
    cmd = [exe, str(pt), f"inputshape={shape(x1)}", f"inputshape2={shape(x2)}", "device=cpu",
           f"fp16={1 if fp16 else 0}", f"ncnnparam={work / 'model.ncnn.param'}",
           f"ncnnbin={work / 'model.ncnn.bin'}", f"ncnnpy={work / 'model_ncnn.py'}",
           f"pnnxparam={work / 'model.pnnx.param'}", f"pnnxbin={work / 'model.pnnx.bin'}",
           f"pnnxpy={work / 'model_pnnx.py'}", f"pnnxonnx={work / 'model.pnnx.onnx'}"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=work)
    param = work / "model.ncnn.param"
    if proc.returncode != 0 or not param.is_file() or not (work / "model.ncnn.bin").is_file():
        tail = [line for line in proc.stdout.splitlines() if line.strip()][-3:]
        raise ExportError(f"pnnx failed (exit {proc.returncode}): {' | '.join(tail)}")
    return param


@contextlib.contextmanager
def warnings_ignored():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def ncnn_net(param: Path, bin_path: Path, fp16: bool = False, threads: int | None = None):
    """An ncnn.Net for the files: fp32 storage and arithmetic, or fp16 storage (``fp16``)."""
    ncnn = require("ncnn", "running an NCNN model")
    net = ncnn.Net()
    net.opt.use_vulkan_compute = False
    net.opt.use_fp16_packed = fp16
    net.opt.use_fp16_storage = fp16
    net.opt.use_fp16_arithmetic = False
    net.opt.use_bf16_storage = False
    net.opt.num_threads = threads or max(1, torch.get_num_threads())
    if net.load_param(str(param)) != 0 or net.load_model(str(bin_path)) != 0:
        raise ExportError(f"{param}: ncnn cannot load the files")
    return net


def ncnn_run(net, x: torch.Tensor, input_blob: str = INPUT_BLOB, output_blob: str = OUTPUT_BLOB) -> np.ndarray:
    """Run ``net`` on a (1, C, H, W) float tensor; (1, C', H', W') float32 array, or RuntimeError."""
    ncnn = require("ncnn", "running an NCNN model")
    with net.create_extractor() as ex:
        ex.input(input_blob, ncnn.Mat(np.ascontiguousarray(x.numpy(), np.float32), batch_index=0).clone())
        ret, out = ex.extract(output_blob)
        if ret != 0 or out.empty():
            raise RuntimeError(f"ncnn could not run the model on a {x.shape[-2]}x{x.shape[-1]} input (error {ret})")
        y = np.array(out.numpy(batch_index=0), np.float32, copy=True)
    return y.reshape(1, *y.shape[-3:]) if y.ndim != 4 else y


def verify_ncnn(param: Path, bin_path: Path, reference: torch.nn.Module, sizes, in_ch: int, fp16: bool,
                seed: int = 0) -> dict:
    """Max abs error of the NCNN files vs the fp32 PyTorch reference at each (H, W)."""
    net = ncnn_net(param, bin_path, fp16=fp16)
    g = torch.Generator().manual_seed(seed)
    errors = {}
    for h, w in sizes:
        x = torch.rand(1, in_ch, h, w, generator=g)
        with torch.inference_mode():
            ref = reference(x).numpy()
        try:
            out = ncnn_run(net, x)
        except RuntimeError as err:
            raise ExportError(f"{param}: {err}") from None
        if out.shape != ref.shape:
            raise ExportError(f"{param}: NCNN output shape {out.shape} at input {(1, in_ch, h, w)}, expected {ref.shape}")
        if not np.isfinite(out).all():
            raise ExportError(f"{param}: NCNN output has NaN/Inf at input {(1, in_ch, h, w)}")
        errors[f"1x{in_ch}x{h}x{w}"] = float(np.abs(out - ref).max())
    return errors


def export_model(model: torch.nn.Module, out: str | os.PathLike[str], *, fp16: bool = False,
                 atol: float | None = None, verify_sizes=VERIFY_SIZES, log=print) -> dict:
    """Fuse (a copy of) ``model``, convert through pnnx, verify with the ncnn runtime, then move
    NAME.param and NAME.bin into place (both or neither).

    Returns ``{"errors": {size: max_abs}, "max_error", "param", "bin", "minimum_size", "layers"}``.
    Raises ExportError (nothing written) when the model is refused, conversion leaves layers NCNN
    does not have, or the result differs from PyTorch by more than ``atol``.
    """
    require_all(("pnnx", "ncnn"), "NCNN export")
    why = refusal(model)
    if why:
        raise ExportError(f"cannot export to NCNN: {why}")
    param_out, bin_out = output_paths(out)
    in_ch = int(model.in_ch)
    reference = copy.deepcopy(model).float().eval().fuse()
    net = copy.deepcopy(reference)
    (h1, w1), (h2, w2) = trace_sizes(model)
    gen = torch.Generator().manual_seed(1)
    x1, x2 = torch.rand(1, in_ch, h1, w1, generator=gen), torch.rand(1, in_ch, h2, w2, generator=gen)
    min_size = onnx_minimum_size(model)
    sizes = list(dict.fromkeys((max(h, min_size), max(w, min_size)) for h, w in verify_sizes))
    sizes = [s for s in sizes if s != (h1, w1)]
    atol = atol if atol is not None else (FP16_ATOL if fp16 else FP32_ATOL)

    with tempfile.TemporaryDirectory(prefix=".hyresr-ncnn-", dir=param_out.parent if param_out.parent.is_dir()
                                     else None) as tmp:
        work = Path(tmp).resolve()  # pnnx runs in it (cwd): a relative path would resolve twice
        try:
            param = _run_pnnx(net, x1, x2, work, fp16)
        except (ExportError, MissingDependency):
            raise
        except Exception as err:  # tracing errors
            msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ExportError(f"NCNN export failed while tracing: {type(err).__name__}: {msg}") from None
        left = unconverted_layers(param)
        if left:
            raise ExportError(f"pnnx left layers no NCNN runtime has ({', '.join(left)}); not written")
        _rename_blobs(param)
        bin_path = work / "model.ncnn.bin"
        errors = verify_ncnn(param, bin_path, reference, sizes, in_ch, fp16)
        worst = max(errors.values())
        for size, e in errors.items():
            log(f"  ncnn vs PyTorch fp32 at {size}: max abs error {e:.3e}")
        if not worst <= atol:
            raise ExportError(f"{param_out}: NCNN output differs from PyTorch by {worst:.3e} (> {atol:g}); not written")
        layers = layer_types(param)
        param_out.parent.mkdir(parents=True, exist_ok=True)
        # both files under temporary names in the destination first, then renamed: a run that stops
        # midway leaves the old pair (or nothing), never a new .param with an old .bin
        staged = []
        for src, dst in ((param, param_out), (bin_path, bin_out)):
            fd, tmp_dst = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=f".partial{dst.suffix}", dir=dst.parent)
            os.close(fd)
            with open(src, "rb") as fi, open(tmp_dst, "wb") as fo:
                fo.write(fi.read())
            os.chmod(tmp_dst, 0o666 & ~_umask())
            staged.append((Path(tmp_dst), dst))
        try:
            for tmp_dst, dst in staged:
                os.replace(tmp_dst, dst)
        finally:
            for tmp_dst, _ in staged:
                tmp_dst.unlink(missing_ok=True)
    return {"errors": errors, "max_error": worst, "param": str(param_out), "bin": str(bin_out),
            "minimum_size": min_size, "layers": len(layers)}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def main(args: argparse.Namespace) -> int:
    err = sys.stderr
    src = Path(args.input)
    param_out, bin_out = output_paths(args.output)
    if same_file(src, param_out) or same_file(src, bin_out):
        print(f"hyresr export-ncnn: refusing to overwrite the input {src}", file=err)
        return 2
    try:
        require_all(("pnnx", "ncnn"), "NCNN export")
        model, _ = load_model(src)
    except (CheckpointError, ValueError, MissingDependency) as e:
        print(f"hyresr export-ncnn: {e}", file=err)
        return 2
    why = refusal(model)
    if why:
        print(f"hyresr export-ncnn: {src}: cannot export to NCNN: {why}", file=err)
        return 2
    s = model_summary(model)
    print(f"{src}: HyReSR {s['variant']} x{s['scale']}; exporting fused to NCNN, "
          f"{'fp16' if args.fp16 else 'fp32'} weights, any input size >= {onnx_minimum_size(model)}")
    try:
        result = export_model(model, param_out, fp16=args.fp16)
    except (ExportError, OSError) as e:
        print(f"hyresr export-ncnn: {e}", file=err)
        return 1
    print(f"max abs error {result['max_error']:.3e} (limit {FP16_ATOL if args.fp16 else FP32_ATOL:g}); "
          f"{result['layers']} NCNN layers; minimum input size {result['minimum_size']}x{result['minimum_size']}")
    print(f"wrote {param_out} and {bin_out}")
    return 0
