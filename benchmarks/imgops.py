"""Image helpers for the benchmarks: image files, the field's LR images and its metrics.

The MATLAB-compatible bicubic resize and PSNR / SSIM are BasicSR's own
(``basicsr.utils.matlab_functions.imresize``; ``basicsr.metrics.calculate_psnr`` / ``calculate_ssim``
with ``test_y_channel=True``: BT.601 Y, ``crop_border`` pixels removed per side, SSIM with an 11x11
Gaussian, sigma 1.5), imported through the pack's compat shim (``hyresr_arch/tools/hosts.py``) since
basicsr 1.4.2 does not import with current torchvision on its own. BasicSR's metrics take BGR
images; every helper here takes RGB, as the rest of the benchmarks do.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # appended: an installed / PYTHONPATH copy of the pack wins

from hyresr_arch.tools.hosts import apply_basicsr_compat  # noqa: E402

apply_basicsr_compat()
from basicsr.metrics import calculate_psnr, calculate_ssim  # noqa: E402
from basicsr.utils.matlab_functions import imresize  # noqa: E402

IMG_EXT = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


def list_images(folder: Path) -> list[Path]:
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMG_EXT)


def imread_rgb(path: Path) -> np.ndarray:
    """uint8 HxWx3 RGB (grey images are replicated to 3 channels)."""
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1].copy()


def imwrite_rgb(path: Path, img: np.ndarray) -> None:
    cv2.imwrite(str(path), img[:, :, ::-1])


def modcrop(img: np.ndarray, scale: int) -> np.ndarray:
    h, w = img.shape[:2]
    return img[: h - h % scale, : w - w % scale]


def bicubic_lr(hr_uint8: np.ndarray, scale: int) -> np.ndarray:
    """The field's LR: MATLAB bicubic downscale of the mod-cropped HR, rounded to uint8."""
    lr = imresize(hr_uint8.astype(np.float32) / 255.0, 1.0 / scale)
    return np.clip(np.round(lr * 255.0), 0, 255).astype(np.uint8)


def psnr_y(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> float:
    """PSNR on the Y channel of two uint8 RGB images."""
    return float(calculate_psnr(sr[:, :, ::-1], hr[:, :, ::-1], crop_border, test_y_channel=True))


def ssim_y(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> float:
    """SSIM on the Y channel of two uint8 RGB images."""
    return float(calculate_ssim(sr[:, :, ::-1], hr[:, :, ::-1], crop_border, test_y_channel=True))


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float 1x3xHxW in [0, 1]; float HxWx3 passes through unscaled."""
    t = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
    return (t.float() / 255.0 if img.dtype == np.uint8 else t.float())[None]


def to_uint8(t: torch.Tensor) -> np.ndarray:
    """float 1x3xHxW -> uint8 HxWx3, clamped and rounded as the field's test scripts do."""
    return (t[0].float().clamp(0, 1) * 255.0).round().byte().permute(1, 2, 0).cpu().numpy()
