"""Image helpers for the benchmarks, dependency-light (numpy + torch + Pillow or OpenCV).

- ``imresize``: MATLAB ``imresize(img, scale, 'bicubic')`` with antialiasing, a faithful port of the
  algorithm BasicSR's ``basicsr.utils.matlab_functions.imresize`` implements (cubic a=-0.5, kernel
  widened by 1/scale when downscaling, symmetric border extension), written as two dense matrices so
  it needs neither BasicSR nor a per-row loop. Checked against BasicSR in tests/test_benchmarks.py.
- ``psnr_y`` / ``ssim_y``: the field's convention (BasicSR ``calculate_psnr/ssim`` with
  ``test_y_channel=True``): uint8 images, BT.601 Y (16-235), ``crop_border`` pixels removed per side,
  SSIM with an 11x11 Gaussian (sigma 1.5), 'valid' filtering, float64.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

IMG_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMG_EXT)


def imread_rgb(path: Path) -> np.ndarray:
    """uint8 HxWx3 RGB (grey images are replicated to 3 channels)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB")).copy()
    except ImportError:
        import cv2

        img = cv2.imread(str(path), cv2.IMREAD_COLOR)
        return img[:, :, ::-1].copy()


def imwrite_rgb(path: Path, img: np.ndarray) -> None:
    try:
        from PIL import Image

        Image.fromarray(img).save(path)
    except ImportError:
        import cv2

        cv2.imwrite(str(path), img[:, :, ::-1])


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


# --------------------------------------------------------------------------------------------------
def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    ax2, ax3 = ax**2, ax**3
    return ((1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
            + (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def _resize_matrix(in_len: int, out_len: int, scale: float, antialiasing: bool = True) -> np.ndarray:
    """(out_len, in_len) matrix M so that out = M @ in along one axis (MATLAB bicubic)."""
    kernel_width = 4.0
    if scale < 1 and antialiasing:
        kernel_width /= scale
    x = np.arange(1, out_len + 1, dtype=np.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - kernel_width / 2)
    p = math.ceil(kernel_width) + 2
    idx = left[:, None] + np.arange(p)[None, :]  # 1-based positions
    dist = u[:, None] - idx
    w = scale * _cubic(dist * scale) if (scale < 1 and antialiasing) else _cubic(dist)
    w = w / w.sum(1, keepdims=True)
    # symmetric extension: position k (1-based) outside [1, in_len] mirrors including the edge pixel
    k = idx - 1  # 0-based
    k = np.where(k < 0, -k - 1, k)
    k = np.where(k >= in_len, 2 * in_len - k - 1, k).astype(np.int64)
    mat = np.zeros((out_len, in_len), dtype=np.float64)
    for j in range(p):
        np.add.at(mat, (np.arange(out_len), k[:, j]), w[:, j])
    return mat


def imresize(img: np.ndarray, scale: float, antialiasing: bool = True) -> np.ndarray:
    """MATLAB-style bicubic resize of a float HxWxC (or HxW) image in [0, 1]; no rounding, no clipping."""
    squeeze = img.ndim == 2
    if squeeze:
        img = img[:, :, None]
    h, w = img.shape[:2]
    oh, ow = math.ceil(h * scale), math.ceil(w * scale)
    mh = _resize_matrix(h, oh, scale, antialiasing)
    mw = _resize_matrix(w, ow, scale, antialiasing)
    out = np.einsum("oh,hwc->owc", mh, img.astype(np.float64))
    out = np.einsum("pw,owc->opc", mw, out)
    out = out.astype(np.float32)
    return out[:, :, 0] if squeeze else out


def bicubic_lr(hr_uint8: np.ndarray, scale: int) -> np.ndarray:
    """The field's LR: MATLAB bicubic downscale of the mod-cropped HR, rounded to uint8."""
    lr = imresize(hr_uint8.astype(np.float32) / 255.0, 1.0 / scale)
    return np.clip(np.round(lr * 255.0), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------------
def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """uint8/float RGB [0, 255] -> Y [16, 235] float64 (BT.601, as MATLAB rgb2ycbcr / BasicSR)."""
    img = img.astype(np.float64) / 255.0
    return (img @ np.array([65.481, 128.553, 24.966]) + 16.0)


def _crop(y: np.ndarray, border: int) -> np.ndarray:
    return y[border:-border, border:-border] if border else y


def psnr_y(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> float:
    a, b = _crop(rgb_to_y(sr), crop_border), _crop(rgb_to_y(hr), crop_border)
    mse = np.mean((a - b) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = np.exp(-((np.arange(size) - (size - 1) / 2) ** 2) / (2 * sigma**2))
    g /= g.sum()
    return torch.from_numpy(np.outer(g, g))[None, None]


def ssim_y(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> float:
    a = torch.from_numpy(_crop(rgb_to_y(sr), crop_border))[None, None]
    b = torch.from_numpy(_crop(rgb_to_y(hr), crop_border))[None, None]
    win = _gaussian_window().to(torch.float64)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = F.conv2d(a, win), F.conv2d(b, win)
    s11 = F.conv2d(a * a, win) - mu1**2
    s22 = F.conv2d(b * b, win) - mu2**2
    s12 = F.conv2d(a * b, win) - mu1 * mu2
    m = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    return float(m.mean())


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float 1x3xHxW in [0, 1]; float HxWx3 passes through unscaled."""
    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    return (t.float() / 255.0 if img.dtype == np.uint8 else t.float())[None]


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """float 1x3xHxW -> uint8 HxWx3, clamped and rounded as the field's test scripts do."""
    return (t[0].float().clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
