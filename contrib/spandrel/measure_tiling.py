"""Measure how far a tiled upscale is from the whole-image one, for the spandrel test models.

    python contrib/spandrel/measure_tiling.py                 # Urban100 img_023 (1024x1024), 512 px tiles
    python contrib/spandrel/measure_tiling.py --image X.png --tile 512 --overlap 32

HyReSR's GlobalMix (bottleneck linear attention, light and bigger variants) and the channel
attention of its NAF blocks (every variant) pool over the whole input, so an image cut into tiles
is not upscaled exactly as the whole image is. This script decides the ``tiling`` the spandrel
loader declares: each model upscales the image whole and as tiles of ``--tile`` px on the input
(tiles overlap by ``--overlap`` px on every inner side and each keeps only its own part, as
chaiNNer's tiler does, so no blending hides a difference), and the two 8-bit outputs are compared.

Prints one line per model file: max and mean absolute difference in 8-bit levels, and the share
of pixels that differ by more than 2 levels.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
try:
    import hyresr_arch as H
except ImportError:  # a plain checkout
    sys.path.insert(0, str(ROOT))
    import hyresr_arch as H

MODELS = HERE / "tests" / "models"
DEFAULT_IMAGE = ROOT.parent / "shared" / "data" / "val_Urban100" / "img_023.png"


def read_image(path: Path) -> torch.Tensor:
    import cv2

    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise SystemExit(f"cannot read {path}")
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255
    return torch.from_numpy(rgb).permute(2, 0, 1)[None]


def tiled(model: torch.nn.Module, x: torch.Tensor, scale: int, tile: int, overlap: int) -> torch.Tensor:
    """Tiles of ``tile`` px (plus ``overlap`` px of context on each inner side), each keeping its own part."""
    _, _, h, w = x.shape
    out = torch.zeros(1, 3, h * scale, w * scale)
    for y in range(0, h, tile):
        for x0 in range(0, w, tile):
            y1, x1 = min(y + tile, h), min(x0 + tile, w)
            ty, tx = max(0, y - overlap), max(0, x0 - overlap)
            part = model(x[..., ty : min(h, y1 + overlap), tx : min(w, x1 + overlap)])
            oy, ox = (y - ty) * scale, (x0 - tx) * scale
            out[..., y * scale : y1 * scale, x0 * scale : x1 * scale] = part[
                ..., oy : oy + (y1 - y) * scale, ox : ox + (x1 - x0) * scale
            ]
    return out


def to_8bit(t: torch.Tensor) -> torch.Tensor:
    return (t.clamp(0, 1) * 255).round()


@torch.inference_mode()
def measure(path: Path, image: torch.Tensor, tile: int, overlap: int) -> dict:
    from safetensors.torch import load_file

    model = H.build_from_state_dict(load_file(path)).eval()
    scale = model.hyperparameters["scale"]
    whole = to_8bit(model(image))
    parts = to_8bit(tiled(model, image, scale, tile, overlap))
    diff = (whole - parts).abs()
    return {"max": diff.max().item(), "mean": diff.mean().item(), "over2": (diff > 2).float().mean().item(),
            "global_mix": model.hyperparameters["global_mix"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--models", nargs="*", type=Path, default=sorted(MODELS.glob("*.safetensors")))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    image = read_image(args.image)
    print(f"{args.image.name} {tuple(image.shape[-2:])}, tiles {args.tile} px, overlap {args.overlap} px")
    for path in args.models:
        r = measure(path, image, args.tile, args.overlap)
        print(f"{path.name}: GlobalMix {'yes' if r['global_mix'] else 'no'}; tiled vs whole: max {r['max']:.0f}/255, "
              f"mean {r['mean']:.3f}/255, {100 * r['over2']:.2f}% of values differ by more than 2/255")
    return 0


if __name__ == "__main__":
    sys.exit(main())
