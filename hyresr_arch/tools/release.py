"""``hyresr release CHECKPOINT --name 4x-Name [-o DIR]``: a community release bundle in one folder.

DIR (default ``./4x-Name``) receives:

* ``4x-Name.safetensors``          fused weights (inference; spandrel with HyReSR registered)
* ``4x-Name_unfused.safetensors``  the training weights, for fine-tuning (absent if the input was
  already fused: the branches cannot be recovered)
* ``4x-Name_fp32.onnx`` / ``4x-Name_fp16.onnx``  dynamic batch/height/width, opset 17
* ``4x-Name.param`` / ``4x-Name.bin``  NCNN (Upscayl, chaiNNer's NCNN nodes, *-ncnn-vulkan), fp16
  weights, any size; when pnnx and ncnn are installed (``hyresr[ncnn]``) and the conversion
  verifies (``--no-ncnn`` leaves them out; a failed conversion is reported and left out)
* ``4x-Name.json``                 model card in OpenModelDB's shape (``architecture: "hyresr"``,
  ``resources``: the model files with size and sha256; ``images``: the comparison)
* ``4x-Name_comparison.png``       bicubic | HyReSR | original, on a sample photo (scikit-image's
  ``chelsea``, one of the quick start's held-out images, never trained on, downscaled by the
  model's scale) or on ``--sample IMAGE`` (bicubic | HyReSR only)

Everything is built in a temporary folder next to DIR and each file is verified (loaded back by
spandrel / onnxruntime / ncnn / the image decoder, compared with the in-memory model) before the files
are moved into DIR. If anything fails, DIR is not touched. A DIR that already holds a bundle of
that name is refused before any work unless ``--force`` is given. The ``.safetensors`` files are
byte-identical for identical inputs (their metadata is written in sorted order).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib.util
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import export_ncnn, export_onnx
from .checkpoints import (CheckpointError, hyperparameter_metadata, load_descriptor, load_model, model_summary,
                          onnx_minimum_size, save_state_dict)
from .deps import MissingDependency, missing_message, require, require_all
from .files import atomic_write_bytes, ensure_writable_dir, sha256_of
from .fuse import fuse_and_check, probe_input, verify_loads
from .images import Image, match_channels, read_image, to_array, to_tensor, write_image

COMPARISON_ROLE = "bicubic vs HyReSR comparison"
NAME_RE = re.compile(r"^(\d+)x-[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", metavar="CHECKPOINT", help="trained HyReSR checkpoint (.pth/.safetensors)")
    parser.add_argument("--name", required=True, help="release name in OpenModelDB style, e.g. 4x-MyPhotos")
    parser.add_argument("-o", "--output", metavar="DIR", default=None, help="output folder (default ./NAME)")
    parser.add_argument("--author", default="", help="model card author")
    parser.add_argument("--license", default="", help="model card license (SPDX id, e.g. CC-BY-4.0)")
    parser.add_argument("--description", default="", help="model card description")
    parser.add_argument("--tags", default="", help="comma-separated model card tags, e.g. photo,general-upscaler")
    parser.add_argument("--sample", default=None, metavar="IMAGE", help="low-resolution image for the comparison")
    parser.add_argument("--opset", type=int, default=export_onnx.DEFAULT_OPSET, help="ONNX opset (default 17)")
    parser.add_argument("--force", action="store_true", help="replace a bundle of the same name already in DIR")
    parser.add_argument("--no-ncnn", dest="ncnn", action="store_false",
                        help="leave out the NCNN files (added by default when pnnx and ncnn are installed)")


# the default comparison photo: one the quick start holds out (never trains on), see demo.py
DEFAULT_SAMPLE = "chelsea"
DEFAULT_SAMPLE_CROP = (slice(64, 256), slice(140, 332))  # 192 x 192: eye, nose, whiskers, fur


# --------------------------------------------------------------------------- comparison image


def _label(panel: np.ndarray, text: str) -> np.ndarray:
    import cv2

    out = (np.clip(panel, 0, 1) * 255 + 0.5).astype(np.uint8).copy()
    scale = max(0.35, out.shape[1] / 400)
    th = max(1, int(round(scale * 2)))
    (tw, tht), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, th)
    cv2.rectangle(out, (0, 0), (tw + 8, tht + base + 8), (0, 0, 0), -1)
    cv2.putText(out, text, (4, tht + 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), th, cv2.LINE_AA)
    return out.astype(np.float32) / 255


def sample_pair(scale: int, sample: str | None) -> tuple[np.ndarray, np.ndarray | None]:
    """(low-res RGB input, original high-res or None), float32 HWC in [0, 1]."""
    import cv2

    if sample:
        img = read_image(sample)
        lr = match_channels(img.color, 3)
        h, w = lr.shape[:2]
        c = 96  # centre crop keeps the CPU time small
        y0, x0 = max(0, (h - c) // 2), max(0, (w - c) // 2)
        return np.ascontiguousarray(lr[y0 : y0 + c, x0 : x0 + c]), None
    data = require("skimage.data", "the default comparison sample", "or give --sample IMAGE")
    hr = getattr(data, DEFAULT_SAMPLE)()[DEFAULT_SAMPLE_CROP].astype(np.float32) / 255
    size = hr.shape[0] // scale
    hr = hr[: size * scale, : size * scale]
    lr = cv2.resize(hr, (size, size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(lr), np.ascontiguousarray(hr)


@torch.inference_mode()
def comparison_image(model: torch.nn.Module, sample: str | None = None) -> np.ndarray:
    import cv2

    scale = int(model.scale)
    lr, hr = sample_pair(scale, sample)
    h, w = lr.shape[:2]
    x = match_channels(lr, int(model.in_ch))
    y = to_array(model(to_tensor(x)).clamp(0, 1))
    y = match_channels(y, 3) if y.shape[2] == 1 else y[:, :, :3]
    bic = np.clip(cv2.resize(lr, (w * scale, h * scale), interpolation=cv2.INTER_CUBIC), 0, 1)
    panels = [_label(bic, f"bicubic x{scale}"), _label(y, f"HyReSR x{scale}")]
    if hr is not None:
        panels.append(_label(hr, "original"))
    gap = np.ones((h * scale, 4, 3), np.float32)
    row = [panels[0]]
    for p in panels[1:]:
        row += [gap, p]
    return np.concatenate(row, axis=1)


# --------------------------------------------------------------------------- model card


def model_card(name: str, model: torch.nn.Module, files: dict[str, dict], args: argparse.Namespace,
               onnx_errors: dict[str, float], ncnn_error: float | None = None) -> dict:
    s = model_summary(model)
    hp = s["hyperparameters"]
    size_tags = [str(s["variant"]), f"{hp['dims'][0]}dim", f"{hp['experts']}experts"]
    if hp.get("upsampler") == "dysample":
        size_tags.append("dysample")
    resources, images = [], []
    for fname, info in files.items():
        if info["role"] == COMPARISON_ROLE:  # OpenModelDB lists example images apart from the files
            images.append({"type": "standalone", "url": fname})
            continue
        resources.append({
            "platform": ("onnx" if fname.endswith(".onnx") else "ncnn" if fname.endswith((".param", ".bin"))
                         else "pytorch"),
            "type": Path(fname).suffix.lstrip("."),
            "size": info["size"],
            "sha256": info["sha256"],
            "urls": [fname],  # replace with download links when publishing
        })
    return {
        "name": name.split("-", 1)[1],
        "author": args.author,
        "license": args.license,
        "tags": [t.strip() for t in args.tags.split(",") if t.strip()],
        "description": args.description or f"HyReSR ({s['variant']}) x{s['scale']} model.",
        "date": _dt.date.today().isoformat(),
        "architecture": "hyresr",
        "size": size_tags,
        "scale": s["scale"],
        "inputChannels": s["input_channels"],
        "outputChannels": s["output_channels"],
        "resources": resources,
        "images": images,  # file names, like the urls: replace with links when publishing
        "hyresr": {  # not an OpenModelDB field: what a loader needs to know, every file's checksum
            "variant": s["variant"],
            "params_fused": int(sum(p.numel() for p in model.parameters())),
            "hyperparameters": hp,
            "onnx_minimum_size": onnx_minimum_size(model),
            "onnx_max_abs_error": onnx_errors,
            "ncnn_max_abs_error": ncnn_error,
            "files": {f: info["role"] for f, info in files.items()},
            "sha256": {f: info["sha256"] for f, info in files.items()},
        },
    }


# --------------------------------------------------------------------------- build


def bundle_files(name: str) -> list[str]:
    """Every file name a bundle called ``name`` can have."""
    return [f"{name}{suffix}" for suffix in (".safetensors", "_unfused.safetensors", "_fp32.onnx", "_fp16.onnx",
                                             ".param", ".bin", "_comparison.png", ".json")]


def existing_bundle(name: str, out_dir: Path) -> list[str]:
    """The files of a bundle called ``name`` already in ``out_dir``."""
    return [f for f in bundle_files(name) if (out_dir / f).exists()] if out_dir.is_dir() else []


def build_bundle(ckpt_path: str, name: str, out_dir: Path, args: argparse.Namespace, log=print) -> dict:
    model, ckpt = load_model(ckpt_path)
    m = NAME_RE.match(name)
    if not m:
        raise ValueError(f"--name must look like {model.scale}x-Name (letters, digits, _ . + -), got {name!r}")
    if int(m.group(1)) != int(model.scale):
        raise ValueError(f"--name says x{m.group(1)} but the checkpoint is x{model.scale}")

    if model.is_fused:
        log(f"{ckpt_path}: already fused; the bundle will have no unfused training weights")
        fused, unfused = model, None
    else:
        fused, diff = fuse_and_check(model)
        log(f"fused: max abs diff vs unfused {diff:.3e}")
        if not diff <= 1e-4:
            raise CheckpointError(f"{ckpt_path}: fused model differs from unfused by {diff:.3e}")
        unfused = model

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=out_dir.parent))
    try:
        files: dict[str, dict] = {}

        def add(fname: str, role: str) -> None:
            p = stage / fname
            files[fname] = {"size": p.stat().st_size, "sha256": sha256_of(p), "role": role}

        # weights
        meta = hyperparameter_metadata(fused)
        save_state_dict(fused.state_dict(), stage / f"{name}.safetensors", meta,
                        verify=lambda tmp: verify_loads(tmp, fused))
        add(f"{name}.safetensors", "fused weights (inference)")
        if unfused is not None:
            def verify_unfused(tmp: Path) -> None:
                desc, _ = load_descriptor(tmp)
                x = probe_input(desc.input_channels)
                with torch.inference_mode():
                    d = (desc.model.eval()(x) - unfused(x)).abs().max().item()
                if desc.model.is_fused or d > 1e-6:
                    raise CheckpointError(f"{tmp}: unfused weights did not load back identically")

            save_state_dict(unfused.state_dict(), stage / f"{name}_unfused.safetensors",
                            hyperparameter_metadata(unfused), verify=verify_unfused)
            add(f"{name}_unfused.safetensors", "unfused weights (training / fine-tuning)")

        # ONNX (each verified by onnxruntime inside export_model)
        onnx_errors = {}
        for prec, fp16 in (("fp32", False), ("fp16", True)):
            fname = f"{name}_{prec}.onnx"
            log(f"exporting {fname}")
            res = export_onnx.export_model(fused, stage / fname, fp16=fp16, opset=args.opset, log=log)
            onnx_errors[prec] = res["max_error"]
            add(fname, f"ONNX {prec}, opset {args.opset}, dynamic batch/height/width, input >= "
                       f"{res['minimum_size']}x{res['minimum_size']}")

        # NCNN (verified with the ncnn runtime inside export_model), when it can be made
        ncnn_error = None
        if getattr(args, "ncnn", True):
            absent = [m for m in ("pnnx", "ncnn") if importlib.util.find_spec(m) is None]
            if absent:
                log(f"NCNN files left out: {missing_message(absent[0], 'NCNN export')}")
            else:
                log(f"exporting {name}.param / {name}.bin (NCNN, fp16 weights)")
                try:
                    res = export_ncnn.export_model(fused, stage / f"{name}.param", fp16=True, log=log)
                except export_ncnn.ExportError as e:
                    log(f"NCNN files left out: {e}")
                else:
                    ncnn_error = res["max_error"]
                    add(f"{name}.param", f"NCNN graph (Upscayl, chaiNNer, *-ncnn-vulkan), any input >= "
                                         f"{res['minimum_size']}x{res['minimum_size']}")
                    add(f"{name}.bin", "NCNN weights (fp16)")

        # comparison picture
        comp = comparison_image(fused, args.sample)
        write_image(stage / f"{name}_comparison.png", Image(comp, None, 8))
        if read_image(stage / f"{name}_comparison.png").color.shape[:2] != comp.shape[:2]:
            raise CheckpointError("comparison image did not decode back")
        add(f"{name}_comparison.png", COMPARISON_ROLE)

        # model card last: it lists every other file with size and sha256
        card = model_card(name, fused, files, args, onnx_errors, ncnn_error)
        atomic_write_bytes(stage / f"{name}.json", (json.dumps(card, indent=2) + "\n").encode())
        reread = json.loads((stage / f"{name}.json").read_text())
        for fname, digest in reread["hyresr"]["sha256"].items():
            if sha256_of(stage / fname) != digest:
                raise CheckpointError(f"model card checksum mismatch for {fname}")

        # everything verified: move into place (with --force, a previous bundle's files that this
        # one does not have, e.g. _unfused from an earlier unfused input, go too: no stale mix)
        ensure_writable_dir(out_dir)
        written = []
        for fname in [*files, f"{name}.json"]:
            os.replace(stage / fname, out_dir / fname)
            written.append(out_dir / fname)
        for fname in bundle_files(name):
            if fname not in files and fname != f"{name}.json" and (out_dir / fname).exists():
                (out_dir / fname).unlink()
        return {"dir": str(out_dir), "files": [str(p) for p in written], "card": card}
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def main(args: argparse.Namespace) -> int:
    err = sys.stderr
    out_dir = Path(args.output) if args.output else Path(args.name)
    try:
        require_all(("spandrel", "torchvision", "onnx", "onnxruntime"), "a release bundle")
        if not args.sample:
            require_all(("skimage",), "the default comparison sample", "or give --sample IMAGE")
    except MissingDependency as e:
        print(f"hyresr release: {e}", file=err)
        return 2
    if out_dir.exists() and not out_dir.is_dir():
        print(f"hyresr release: {out_dir}: exists and is not a folder", file=err)
        return 2
    previous = existing_bundle(args.name, out_dir)
    if previous and not args.force:
        print(f"hyresr release: {out_dir} already holds a bundle named {args.name} ({', '.join(previous)}); "
              "give --force to replace it, or another -o folder", file=err)
        return 2
    if args.sample and not Path(args.sample).is_file():
        print(f"hyresr release: --sample {args.sample}: no such file", file=err)
        return 2
    try:
        result = build_bundle(args.checkpoint, args.name, out_dir, args)
    except (CheckpointError, export_onnx.ExportError, ValueError, OSError) as e:
        print(f"hyresr release: {e}", file=err)
        return 2 if isinstance(e, (CheckpointError, ValueError)) else 1
    print(f"release bundle in {result['dir']}:")
    for f in result["files"]:
        print(f"  {Path(f).name}  ({Path(f).stat().st_size:,} bytes)")
    return 0
