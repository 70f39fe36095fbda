"""Images for the ``hyresr`` tools: decode a file, encode and write one, convert to and from tensors.

Images are read and written with OpenCV: PNG, JPEG, WebP (and whatever else cv2 decodes); 8- and
16-bit; grey, BGR and BGRA. Alpha is split off and handled by the caller (see ``upscale.py``).
Writes are atomic (see ``files.py``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .files import atomic_write_bytes

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class ImageError(ValueError):
    """An image that cannot be read or written; the message names the file."""


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
