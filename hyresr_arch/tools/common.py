"""Shared plumbing for the ``hyresr`` tools: safe checkpoint reading, atomic writes, image I/O.

Safety rules every tool follows through this module:

* ``.pth`` / ``.pt`` / ``.ckpt`` files are read with ``torch.load(weights_only=True)``; a pickle
  that asks for anything other than tensors and plain containers is refused before any of its
  code can run. ``.safetensors`` cannot hold code at all.
* A truncated or corrupt file, a checkpoint of another architecture, or a HyReSR state dict with
  missing keys or wrong shapes raises :class:`CheckpointError`, one message naming the file.
* Everything written goes to a temporary name in the destination folder first and is moved into
  place with :func:`os.replace`, so an interrupted run never leaves a half-written file under the
  final name (and never touches an existing file until the new one is complete).

Images are read and written with OpenCV: PNG, JPEG, WebP (and whatever else cv2 decodes); 8- and
16-bit; grey, BGR and BGRA. Alpha is split off and handled by the caller (see ``upscale.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import tempfile
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

PTH_EXTS = (".pth", ".pt", ".ckpt", ".bin")
SAFETENSORS_EXTS = (".safetensors",)
ONNX_EXTS = (".onnx",)
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class CheckpointError(ValueError):
    """A model file that cannot be used; the message names the file and the problem."""


class ImageError(ValueError):
    """An image that cannot be read or written; the message names the file."""


# --------------------------------------------------------------------------- checkpoints


@dataclass
class Checkpoint:
    """What a model file holds after safe reading and unwrapping."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors header metadata
    format: str = "pth"  # "pth" | "safetensors"


def model_kind(path: str | os.PathLike[str]) -> str:
    """'pth', 'safetensors' or 'onnx' from the extension; CheckpointError otherwise."""
    ext = Path(path).suffix.lower()
    if ext in PTH_EXTS:
        return "pth"
    if ext in SAFETENSORS_EXTS:
        return "safetensors"
    if ext in ONNX_EXTS:
        return "onnx"
    raise CheckpointError(
        f"{path}: unsupported model file extension {ext!r} "
        f"(expected one of {', '.join(PTH_EXTS + SAFETENSORS_EXTS + ONNX_EXTS)})"
    )


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")


def _load_pth(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4" noise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses globals it does not know *before* calling them, so nothing ran.
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = [ln for ln in lines if "Unsupported" in ln or "global" in ln.lower()]
        first = (detail or lines or [type(err).__name__])[0]
        raise CheckpointError(
            f"{path}: refused to load: the pickle references objects other than tensors "
            f"(an unsafe or non-standard checkpoint; nothing in it was executed). "
            f"Convert it to .safetensors with a trusted tool, or re-save only the state dict. "
            f"[{first}]"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{path}: cannot read checkpoint (truncated or corrupt file?): {type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        ) from None


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
        return tensors, metadata
    except Exception as err:  # safetensors raises its own SafetensorError / OSError types
        msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(
            f"{path}: cannot read safetensors file (truncated or corrupt?): "
            f"{type(err).__name__}: {msg}"
        ) from None


def _plain_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap host containers and keep tensors only; CheckpointError when nothing usable is left."""
    from hyresr_arch import unwrap_state_dict

    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: expected a state dict (a dict of tensors), found {type(obj).__name__}"
        )
    try:
        sd = unwrap_state_dict(obj)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot unwrap the state dict: {err}") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(sd).__name__}")
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors, so it is not a model checkpoint")
    return tensors


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a .pth/.pt/.ckpt/.safetensors model file safely and unwrap its state dict.

    Never executes code from the file. Raises CheckpointError naming the file on any problem.
    """
    p = Path(path)
    kind = model_kind(p)
    if kind == "onnx":
        raise CheckpointError(f"{p}: is an ONNX model, not a PyTorch checkpoint")
    _check_readable(p)
    if kind == "safetensors":
        raw, metadata = _load_safetensors(p)
        return Checkpoint(p, _plain_state_dict(raw, p), metadata, "safetensors")
    return Checkpoint(p, _plain_state_dict(_load_pth(p), p), {}, "pth")


def build_model(ckpt: Checkpoint) -> torch.nn.Module:
    """A HyReSR model (eval mode, CPU, fp32) with the checkpoint's weights loaded."""
    from hyresr_arch import build_from_state_dict

    try:
        model = build_from_state_dict(ckpt.state_dict)
    except ValueError as err:  # HyReSRStateDictError is a ValueError
        raise CheckpointError(f"{ckpt.path}: {err}") from None
    except (RuntimeError, KeyError, IndexError) as err:
        raise CheckpointError(
            f"{ckpt.path}: not a usable HyReSR checkpoint: {type(err).__name__}: {err}"
        ) from None
    return model.eval()


def load_model(path: str | os.PathLike[str]) -> tuple[torch.nn.Module, Checkpoint]:
    """read_checkpoint + build_model."""
    ckpt = read_checkpoint(path)
    return build_model(ckpt), ckpt


def hyperparameters_of(model: torch.nn.Module) -> dict[str, Any]:
    hp = getattr(model, "hyperparameters", None)
    return dict(hp) if isinstance(hp, dict) else {}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def model_summary(model: torch.nn.Module) -> dict[str, Any]:
    """Facts about a built HyReSR model, shared by info/release."""
    hp = hyperparameters_of(model)
    n_params = sum(p.numel() for p in model.parameters())
    n_buffers = sum(b.numel() for b in model.buffers())
    return {
        "architecture": "HyReSR",
        "variant": getattr(model, "variant", "custom"),
        "scale": int(hp.get("scale", getattr(model, "scale", 0))),
        "input_channels": int(hp.get("in_ch", getattr(model, "in_ch", 0))),
        "output_channels": int(hp.get("out_ch", getattr(model, "out_ch", 0))),
        "params": int(n_params),
        "buffers": int(n_buffers),
        "fused": bool(getattr(model, "is_fused", False)),
        "hyperparameters": _jsonable(hp),
    }


# --------------------------------------------------------------------------- writing


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when a and b name the same file (existing or not, resolving links and '..')."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return os.path.normcase(os.path.realpath(pa)) == os.path.normcase(os.path.realpath(pb))


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` if needed and prove it is writable; otherwise raise PermissionError or
    NotADirectoryError with a message naming the folder."""
    d = Path(path)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(f"{d}: exists and is not a folder") from None
    except OSError as err:
        raise PermissionError(f"{d}: cannot create output folder: {err.strerror or err}") from None
    if not d.is_dir():
        raise NotADirectoryError(f"{d}: exists and is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".hyresr-write-test-", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PermissionError(f"{d}: output folder is not writable: {err.strerror or err}") from None
    return d


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `final` (same extension); on success move it into place.

    The temporary file is removed if the block raises, so `final` is either the complete new file
    or untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".partial{final.suffix}", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; final files get normal modes
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(final: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def save_state_dict(
    state_dict: dict[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
    verify: Any = None,
) -> None:
    """Write a flat state dict atomically: .safetensors (with string metadata) or .pth/.pt
    (``{"params": state_dict}``, the BasicSR/neosr layout, tensors only so weights_only and
    spandrel's restricted unpickler both read it).

    ``verify(tmp_path)`` (optional) is called on the complete temporary file before it is moved
    into place; raise from it to abort.
    """
    path = Path(path)
    kind = model_kind(path)
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        if kind == "safetensors":
            from safetensors.torch import save_file

            save_file(sd, str(tmp), metadata={str(k): str(v) for k, v in (metadata or {}).items()})
        elif kind == "pth":
            torch.save({"params": sd}, tmp)
        else:
            raise CheckpointError(f"{path}: cannot save a state dict as {path.suffix}")
        if verify is not None:
            verify(tmp)


def hyperparameter_metadata(model: torch.nn.Module) -> dict[str, str]:
    """safetensors metadata in the traiNNer-redux style (hyperparameters as JSON) plus our facts."""
    summary = model_summary(model)
    return {
        "format": "pt",
        "architecture": "HyReSR",
        "variant": str(summary["variant"]),
        "fused": "true" if summary["fused"] else "false",
        "hyperparameters": json.dumps(summary["hyperparameters"], sort_keys=True),
    }


def sha256_of(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --------------------------------------------------------------------------- spandrel / devices


def spandrel_loader(device: str | torch.device = "cpu"):
    """A spandrel ModelLoader with HyReSR registered."""
    import spandrel

    from hyresr_arch import register_spandrel

    register_spandrel()
    return spandrel.ModelLoader(device=device)


def load_descriptor(path: str | os.PathLike[str], device: str | torch.device = "cpu"):
    """Safely read a checkpoint (weights_only / safetensors) and hand it to spandrel.

    We do not call ``ModelLoader.load_from_file``: for ``.pt`` files it tries TorchScript first,
    which is not a data-only format. spandrel still does detection and descriptor filling.
    """
    ckpt = read_checkpoint(path)
    loader = spandrel_loader(device)
    try:
        desc = loader.load_from_state_dict(ckpt.state_dict)
    except Exception as err:
        if "hyresr_meta" in ckpt.state_dict:  # a damaged HyReSR checkpoint: name the missing/wrong key
            build_model(ckpt)
        reason = str(err) or "no known architecture matches its keys"
        raise CheckpointError(
            f"{ckpt.path}: spandrel cannot load this checkpoint: {type(err).__name__}: {reason}"
        ) from None
    if desc.architecture.id != "HyReSR":
        raise CheckpointError(
            f"{ckpt.path}: not a HyReSR checkpoint (spandrel detects a {desc.architecture.id} model)"
        )
    return desc, ckpt


def pick_device(name: str | None) -> torch.device:
    if name in (None, "", "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available")
    return dev


# --------------------------------------------------------------------------- images


@dataclass
class Image:
    """An image split into colour and alpha, as float arrays in [0, 1]."""

    color: np.ndarray  # (H, W, C) float32 RGB (C=3) or grey (C=1)
    alpha: np.ndarray | None  # (H, W) float32 or None
    bit_depth: int  # 8 or 16 (what the file held; used to write the result)


def read_image(path: str | os.PathLike[str]) -> Image:
    """Decode an image file (unicode paths ok); ImageError naming the file if it cannot be read."""
    import cv2

    p = Path(path)
    try:
        data = np.fromfile(str(p), dtype=np.uint8)
    except OSError as err:
        raise ImageError(f"{p}: cannot read file: {err.strerror or err}") from None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise ImageError(f"{p}: cannot decode image (corrupt, truncated or unsupported format)")
    if img.dtype == np.uint8:
        arr, depth = img.astype(np.float32) / 255.0, 8
    elif img.dtype == np.uint16:
        arr, depth = img.astype(np.float32) / 65535.0, 16
    elif img.dtype in (np.float32, np.float64):
        arr, depth = np.clip(img.astype(np.float32), 0.0, 1.0), 16
    else:
        raise ImageError(f"{p}: unsupported pixel type {img.dtype}")
    if arr.ndim == 2:
        return Image(arr[:, :, None], None, depth)
    c = arr.shape[2]
    if c == 1:
        return Image(arr, None, depth)
    if c == 2:  # grey + alpha
        return Image(arr[:, :, :1], arr[:, :, 1], depth)
    if c == 3:
        return Image(np.ascontiguousarray(arr[:, :, ::-1]), None, depth)
    if c == 4:
        return Image(np.ascontiguousarray(arr[:, :, 2::-1]), np.ascontiguousarray(arr[:, :, 3]), depth)
    raise ImageError(f"{p}: unsupported channel count {c}")


def encode_image(img: Image, ext: str, quality: int = 95) -> bytes:
    """Encode to PNG/JPEG/WebP/... bytes. JPEG and WebP are 8-bit only; they drop 16-bit depth
    (JPEG also drops alpha, which is composited over nothing: alpha is simply discarded)."""
    import cv2

    ext = ext.lower() if ext.startswith(".") else "." + ext.lower()
    depth = img.bit_depth if ext in (".png", ".tif", ".tiff") else 8
    color = img.color
    if color.shape[2] == 3:
        color = color[:, :, ::-1]
    planes = [color]
    if img.alpha is not None and ext not in (".jpg", ".jpeg", ".bmp"):
        planes.append(img.alpha[:, :, None])
    out = _quantize(planes, 65535.0 if depth == 16 else 255.0, np.uint16 if depth == 16 else np.uint8)
    if out.shape[2] == 1:
        out = out[:, :, 0]
    elif out.shape[2] == 2:  # grey + alpha: cv2 writes BGRA
        g, a = out[:, :, 0], out[:, :, 1]
        out = np.stack([g, g, g, a], axis=2)
    params: list[int] = []
    if ext in (".jpg", ".jpeg"):
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    elif ext == ".webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, quality]
    ok, buf = cv2.imencode(ext, np.ascontiguousarray(out), params)
    if not ok:
        raise ImageError(f"cannot encode image as {ext}")
    return buf.tobytes()


def _quantize(planes: list[np.ndarray], peak: float, dtype: type, rows: int = 256) -> np.ndarray:
    """Clip float planes (H, W, c_i) to [0, 1] and round into one integer (H, W, sum c_i) array.

    Works in blocks of rows, so a large result (an 8192x8192 float image is 768 MiB) is not copied
    whole three more times on its way to 8 or 16 bits."""
    h, w = planes[0].shape[:2]
    out = np.empty((h, w, sum(p.shape[2] for p in planes)), dtype)
    for r0 in range(0, h, rows):
        c0 = 0
        for p in planes:
            block = np.clip(p[r0 : r0 + rows], 0.0, 1.0)
            block *= peak
            block += 0.5
            out[r0 : r0 + rows, :, c0 : c0 + p.shape[2]] = block  # truncation after +0.5 = rounding
            c0 += p.shape[2]
    return out


def write_image(path: str | os.PathLike[str], img: Image, quality: int = 95) -> None:
    """Encode and write atomically (temp name in the same folder, then rename)."""
    p = Path(path)
    data = encode_image(img, p.suffix or ".png", quality)
    try:
        atomic_write_bytes(p, data)
    except OSError as err:
        raise ImageError(f"{p}: cannot write image: {err.strerror or err}") from None


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """(H, W, C) float array -> (1, C, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1))).unsqueeze(0).float()


def to_array(t: torch.Tensor) -> np.ndarray:
    """(1, C, H, W) tensor -> (H, W, C) float32 array clipped to [0, 1]."""
    return t.detach().float().clamp_(0, 1).squeeze(0).permute(1, 2, 0).cpu().numpy()


def match_channels(arr: np.ndarray, channels: int) -> np.ndarray:
    """Convert an (H, W, C) colour array to the model's input channel count.

    grey->RGB repeats the plane; RGB->grey uses BT.601 luma; RGB->RGBA adds opaque alpha (only for
    4-channel models); anything else is an ImageError.
    """
    c = arr.shape[2]
    if c == channels:
        return arr
    if c == 1 and channels in (3, 4):
        out = np.repeat(arr, 3, axis=2)
        if channels == 4:
            out = np.concatenate([out, np.ones_like(arr)], axis=2)
        return out
    if c == 3 and channels == 1:
        return (arr @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[:, :, None]
    if c == 3 and channels == 4:
        return np.concatenate([arr, np.ones_like(arr[:, :, :1])], axis=2)
    raise ImageError(f"cannot feed a {c}-channel image to a {channels}-channel model")
