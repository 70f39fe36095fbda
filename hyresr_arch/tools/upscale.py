"""``hyresr upscale -m MODEL INPUT... -o OUTDIR``: upscale images with a HyReSR model.

Each image goes through three steps: ``images.read_image`` (decode, split off alpha) -> the model
(a ``runners.Runner``: ``.pth`` / ``.safetensors`` through spandrel, ``.onnx`` through onnxruntime,
NCNN ``.param`` / ``.bin`` through the ``ncnn`` package),
tiled when asked -> ``images.write_image`` (encode, written atomically).

Tiling (``--tile N``): the image is cut into N x N cores; each core is run with ``--overlap`` pixels
of real image context on every side (its start snapped to the network's window grid) and only the
core of the result is kept, so tiles never blend. HyReSR's channel attention and GlobalMix see the
whole tile, so a tiled result differs slightly from the whole-image one: the test suite bounds the
mean absolute difference (see ``docs/USE_A_MODEL.md``).

Alpha: a colour model upscales the alpha plane separately with the same model, as a grey image
(``--alpha model``, default) or with bicubic resampling (``--alpha bicubic``); a constant alpha
plane (fully opaque PNGs) is kept constant without running anything. A 4-channel model gets RGBA
directly. Grey images are fed to colour models as three equal planes and written back as grey.

Every output is written to a temporary name in OUTDIR and renamed when complete. An output path
that is an input path is refused before anything runs. Inputs, the model file's name and the
optional package the model needs (spandrel / onnxruntime) are checked before the model is loaded.
A missing or bad input image is reported once, in one line, and skipped; the others are still
written and the exit code is 1. OUTDIR (and any parent this run created) is removed again when
nothing was written into it. ONNX graphs with a fixed input size are run through
``runners.run_fixed_size`` (padded or cut into windows of that size).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from . import images
from .checkpoints import CheckpointError, model_kind
from .deps import MissingDependency, require_all
from .files import ensure_writable_dir, same_file
from .images import Image, ImageError, match_channels, to_array, to_tensor
from .runners import Runner, load_runner

EXIT_OK, EXIT_SOME_FAILED, EXIT_USAGE = 0, 1, 2


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-m", "--model", required=True,
                        help=".pth / .safetensors / .onnx model, or NCNN NAME.param (with NAME.bin)")
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders of images")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder (created)")
    parser.add_argument("--tile", type=int, default=0, metavar="N",
                        help="tile size in input pixels (0 = whole image, the default)")
    parser.add_argument("--overlap", type=int, default=32, metavar="N",
                        help="context pixels around each tile (default 32)")
    prec = parser.add_mutually_exclusive_group()
    prec.add_argument("--fp16", action="store_true",
                      help="half precision (PyTorch models that support it; NCNN: fp16 storage)")
    prec.add_argument("--bf16", action="store_true", help="bfloat16 precision (PyTorch models)")
    parser.add_argument("--device", default="auto", help="torch device or 'auto' (cuda if available)")
    parser.add_argument("--format", default="same", choices=("same", "png", "jpg", "webp"),
                        help="output format (default: the input's)")
    parser.add_argument("--suffix", default="", help="added to each output file name before the extension")
    parser.add_argument("--alpha", default="model", choices=("model", "bicubic"),
                        help="how a colour model upscales alpha (default: model)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


# --------------------------------------------------------------------------- tiling


def _tile_starts(size: int, tile: int) -> list[int]:
    return list(range(0, size, tile))


def upscale_tensor(runner: Runner, x: torch.Tensor, tile: int = 0, overlap: int = 32,
                   progress: bool = False, desc: str = "") -> torch.Tensor:
    """(1, C, H, W) -> (1, C', H*s, W*s), tiled when 0 < tile < max(H, W)."""
    _, _, h, w = x.shape
    s = runner.scale
    if tile <= 0 or (h <= tile and w <= tile):
        return runner(x)
    if overlap < 0:
        raise ValueError("overlap must be >= 0")
    a = max(1, runner.align)
    boxes = [(y0, x0) for y0 in _tile_starts(h, tile) for x0 in _tile_starts(w, tile)]
    # stored channels-last, so the (H, W, C) array the image writer needs is a view, not a copy
    out = torch.zeros(1, h * s, w * s, runner.out_ch).permute(0, 3, 1, 2)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(boxes), desc=desc or "tiles", unit="tile", leave=False, file=sys.stderr)
    try:
        for y0, x0 in boxes:
            y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
            # context window, its start snapped to the window grid so attention windows line up
            cy0 = max(0, (y0 - overlap) // a * a)
            cx0 = max(0, (x0 - overlap) // a * a)
            cy1, cx1 = min(h, y1 + overlap), min(w, x1 + overlap)
            y = runner(x[:, :, cy0:cy1, cx0:cx1])
            out[:, :, y0 * s : y1 * s, x0 * s : x1 * s] = y[
                :, :, (y0 - cy0) * s : (y1 - cy0) * s, (x0 - cx0) * s : (x1 - cx0) * s]
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out


# --------------------------------------------------------------------------- one image


def upscale_image(runner: Runner, img: Image, tile: int = 0, overlap: int = 32, alpha_mode: str = "model",
                  progress: bool = False, name: str = "") -> Image:
    grey_in = img.color.shape[2] == 1
    color = img.color
    alpha = img.alpha
    if runner.in_ch == 4:  # RGBA model: alpha is part of the input
        rgba = match_channels(color, 3)
        rgba = np.concatenate([rgba, (alpha if alpha is not None else np.ones(color.shape[:2], np.float32))[:, :, None]], 2)
        y = to_array(upscale_tensor(runner, to_tensor(rgba), tile, overlap, progress, name))
        out_color = y[:, :, :3] if runner.out_ch == 4 else match_channels(y, 3) if y.shape[2] == 1 else y
        out_alpha = y[:, :, 3] if (runner.out_ch == 4 and alpha is not None) else None
        if out_alpha is None and alpha is not None:
            out_alpha = _upscale_alpha(runner, alpha, tile, overlap, "bicubic", progress, name)
    else:
        x = match_channels(color, runner.in_ch)
        y = to_array(upscale_tensor(runner, to_tensor(x), tile, overlap, progress, name))
        out_color = y
        out_alpha = _upscale_alpha(runner, alpha, tile, overlap, alpha_mode, progress, name) if alpha is not None else None
    if grey_in and out_color.shape[2] == 3:
        out_color = match_channels(out_color, 1)
    elif not grey_in and out_color.shape[2] == 1:
        out_color = np.repeat(out_color, 3, axis=2)
    if out_color.shape[2] == 4:
        out_color = out_color[:, :, :3]
    return Image(np.ascontiguousarray(out_color), out_alpha, img.bit_depth)


def _upscale_alpha(runner: Runner, alpha: np.ndarray, tile: int, overlap: int, mode: str,
                   progress: bool, name: str) -> np.ndarray:
    import cv2

    s = runner.scale
    h, w = alpha.shape
    lo, hi = float(alpha.min()), float(alpha.max())
    if lo == hi:  # constant (e.g. fully opaque): exact, nothing to run
        return np.full((h * s, w * s), lo, np.float32)
    if mode == "bicubic" or runner.in_ch == 4:
        return np.clip(cv2.resize(alpha, (w * s, h * s), interpolation=cv2.INTER_CUBIC), 0, 1)
    x = match_channels(alpha[:, :, None], runner.in_ch if runner.in_ch != 4 else 3)
    y = to_array(upscale_tensor(runner, to_tensor(x), tile, overlap, progress, f"{name} alpha"))
    return y.mean(axis=2) if y.shape[2] > 1 else y[:, :, 0]


# --------------------------------------------------------------------------- CLI


def collect_inputs(items: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in items:
        p = Path(item)
        if p.is_dir():
            files += sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in images.IMAGE_EXTS)
        else:
            files.append(p)
    return files


def output_path(inp: Path, outdir: Path, fmt: str, suffix: str) -> Path:
    ext = inp.suffix if fmt == "same" else "." + fmt
    if ext.lower() not in images.IMAGE_EXTS:
        ext = ".png"
    return outdir / f"{inp.stem}{suffix}{ext}"


def _missing_folders(path: Path) -> list[Path]:
    """The folders of ``path`` (itself included) that do not exist yet, deepest first."""
    out = []
    for d in (path, *path.parents):
        if d.exists() or d.is_symlink():
            break
        out.append(d)
    return out


def _remove_if_empty(folders: list[Path]) -> None:
    """Take back folders this run created when nothing was written into them (deepest first)."""
    for d in folders:
        try:
            d.rmdir()  # only succeeds on an empty folder
        except OSError:
            break


def main(args: argparse.Namespace) -> int:
    err = sys.stderr
    say = lambda m: print(f"hyresr upscale: {m}", file=err)  # noqa: E731
    if args.tile < 0 or args.overlap < 0:
        say("--tile and --overlap must be >= 0")
        return EXIT_USAGE
    # everything that can be checked without the model is checked first (loading takes seconds)
    try:
        kind = model_kind(args.model)
        if kind == "onnx":
            require_all(("onnxruntime",), "upscaling with an .onnx model")
        elif kind == "ncnn":
            require_all(("ncnn",), "upscaling with an NCNN .param model")
        else:
            require_all(("spandrel", "torchvision"), "upscaling with a .pth / .safetensors model")
    except (CheckpointError, MissingDependency) as e:
        say(e)
        return EXIT_USAGE
    if not Path(args.model).is_file():
        say(f"{args.model}: no such model file")
        return EXIT_USAGE
    found = collect_inputs(args.inputs)
    inputs = [p for p in found if p.is_file()]
    failures: list[str] = []
    for p in found:
        if not p.is_file():
            say(f"{p}: {'not a file' if p.exists() else 'no such file or folder'}")
            failures.append(p.name)
    if not inputs:
        if not found:
            say("no input images (give image files or folders holding .png/.jpg/.webp/... files)")
        return EXIT_USAGE
    outdir = Path(args.output)
    plan = [(inp, output_path(inp, outdir, args.format, args.suffix)) for inp in inputs]
    # never overwrite a user's input, never write two inputs to one output
    seen: dict[str, Path] = {}
    for inp, out in plan:
        for other in inputs:
            if same_file(out, other):
                say(f"refusing to write {out}: it is an input file (choose another -o folder or a --suffix)")
                return EXIT_USAGE
        key = str(Path(out).resolve())
        if key in seen:
            say(f"{inp} and {seen[key]} would both be written to {out}")
            return EXIT_USAGE
        seen[key] = inp
    created = _missing_folders(outdir)
    try:
        try:
            ensure_writable_dir(outdir)
            runner = load_runner(args.model, args.device, args.fp16, args.bf16)
        except (CheckpointError, MissingDependency, ValueError, RuntimeError, OSError) as e:
            say(e)
            return EXIT_USAGE
        return _run(runner, plan, failures, args, outdir)
    finally:
        _remove_if_empty(created)  # a run that wrote nothing leaves no empty output folder behind


def _run(runner: Runner, plan: list[tuple[Path, Path]], failures: list[str], args: argparse.Namespace,
         outdir: Path) -> int:
    """Upscale each (input, output) of ``plan``; ``failures`` holds the inputs already found
    missing (each reported once, when found)."""
    err = sys.stderr
    skipped = len(failures)
    progress = not args.quiet
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(plan), desc="images", unit="img", file=err)
    try:
        for inp, out in plan:
            try:
                img = images.read_image(inp)
                result = upscale_image(runner, img, args.tile, args.overlap, args.alpha, progress, inp.name)
                images.write_image(out, result)
            except (ImageError, ValueError, RuntimeError, OSError, MemoryError) as e:
                msg = str(e) if str(inp) in str(e) else f"{inp}: {e}"
                failures.append(inp.name)
                (bar.write if bar is not None else lambda m: print(m, file=err))(f"error: {msg}")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    total = len(plan) + skipped
    done = total - len(failures)
    line = f"upscaled {done}/{total} image(s) x{runner.scale} into {outdir}"
    if failures:
        print(f"{line}; {len(failures)} failed (each named above)", file=err)
        return EXIT_SOME_FAILED
    print(line, file=err)
    return EXIT_OK


__all__ = ["configure", "main", "upscale_tensor", "upscale_image"]
