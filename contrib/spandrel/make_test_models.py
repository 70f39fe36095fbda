"""Train the small HyReSR model files that the spandrel contribution's tests load.

    python contrib/spandrel/make_test_models.py   # writes contrib/spandrel/tests/models/*.safetensors, then
                                                  # regenerates contrib/ (hyresr contrib) to match them

spandrel's tests load real model files and compare their output with stored images, so the
contribution ships three small models (fp16 safetensors, about 3 MB together):

    2x_HyReSR_tiny_test.safetensors                  hyresr_tiny  x2, pixel-shuffle head
    4x_HyReSR_tiny_test.safetensors                  hyresr_tiny  x4, pixel-shuffle head
    4x_HyReSR_light_dysample_fused_test.safetensors  hyresr_light x4, DySample head, fused

Each is trained briefly (L1, Adam, 300-400 steps on one CPU thread: about three minutes in
all) on 64 px crops of the B100 photos in ../shared/data/train_B100 (bicubic downscaled), so
the stored outputs look like upscaled photos, not noise. Without that folder it falls back to
the photos scikit-image ships, and without scikit-image to generated patterns (it says which).
Everything is seeded and runs on one thread: the same machine writes the same files.

Then it runs ``hyresr contrib`` (the snapshot describes the new files); with ``--out`` elsewhere it
does not. The files' metadata names the data (``train_B100``), never a local path.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
try:
    import hyresr_arch as H  # the installed pack (pip install -e .)
except ImportError:  # a plain checkout
    sys.path.insert(0, str(ROOT))
    import hyresr_arch as H

OUT = HERE / "tests" / "models"
DATA = ROOT.parent / "shared" / "data"

# (file name, builder, builder kwargs, fuse after training, training steps)
MODELS = [
    ("2x_HyReSR_tiny_test.safetensors", "hyresr_tiny", dict(scale=2), False, 300),
    ("4x_HyReSR_tiny_test.safetensors", "hyresr_tiny", dict(scale=4), False, 300),
    ("4x_HyReSR_light_dysample_fused_test.safetensors", "hyresr_light", dict(scale=4, upsampler="dysample"), True,
     400),
]
HR_PATCH = 64  # HR crop side (LR 32 at x2, 16 at x4)
BATCH = 8
SEED = 0


def _read_rgb(path: Path) -> np.ndarray | None:
    import cv2

    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    return None if img is None else cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def load_photos(folder: Path | None) -> tuple[list[np.ndarray], str]:
    """HR photos as uint8 RGB arrays, and where they came from (the folder's name, never its path: the
    description goes into the model files' metadata)."""
    if folder is not None and folder.is_dir():
        photos = [p for p in (_read_rgb(f) for f in sorted(folder.glob("*.png"))) if p is not None]
        if photos:
            return photos, f"{len(photos)} photos from {folder.name}"
    try:
        import skimage.data

        photos = []
        for name in ("astronaut", "rocket", "coffee", "chelsea", "brick", "grass", "gravel", "colorwheel"):
            img = np.asarray(getattr(skimage.data, name)())
            img = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img[..., :3]
            photos.append(img.astype(np.uint8))
        return photos, f"{len(photos)} scikit-image sample photos ({folder.name} not found)"
    except Exception:  # noqa: BLE001  (no scikit-image: generated patterns still give a working model)
        g = np.random.default_rng(SEED)
        yy, xx = np.mgrid[0:256, 0:256] / 256.0
        photos = []
        for _ in range(8):
            f = g.uniform(2, 24, size=(3, 2))
            img = np.stack([np.sin(2 * math.pi * (f[c, 0] * xx + f[c, 1] * yy * yy)) for c in range(3)], axis=-1)
            photos.append(((img * 0.5 + 0.5) * 255).astype(np.uint8))
        return photos, f"{len(photos)} generated patterns ({folder.name} not found, scikit-image not installed)"


def batches(photos: list[np.ndarray], scale: int, steps: int, seed: int):
    """(LR, HR) float batches in [0, 1]; LR is an antialiased bicubic downscale of the HR crop."""
    g = np.random.default_rng(seed)
    tensors = [torch.from_numpy(p).permute(2, 0, 1).float() / 255 for p in photos]
    for _ in range(steps):
        crops = []
        for _ in range(BATCH):
            img = tensors[g.integers(len(tensors))]
            top = g.integers(img.shape[1] - HR_PATCH + 1)
            left = g.integers(img.shape[2] - HR_PATCH + 1)
            crop = img[:, top : top + HR_PATCH, left : left + HR_PATCH]
            if g.integers(2):
                crop = crop.flip(-1)
            crops.append(crop)
        hr = torch.stack(crops)
        lr = F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True).clamp(0, 1)
        yield lr, hr


def train(builder: str, kwargs: dict, photos: list[np.ndarray], steps: int) -> H.HyReSR:
    torch.manual_seed(SEED)
    model = H.BUILDERS[builder](**kwargs).train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    for lr, hr in batches(photos, kwargs["scale"], steps, SEED):
        loss = F.l1_loss(model(lr), hr)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def _psnr(x: torch.Tensor, ref: torch.Tensor) -> float:
    return -10 * math.log10(F.mse_loss(x, ref).item())


@torch.inference_mode()
def psnr_gain(model: H.HyReSR, scale: int, folder: Path) -> str:
    """Mean RGB PSNR of model and bicubic on the held-out Set5 photos (a sanity check only)."""
    files = sorted(folder.glob("*.png")) if folder.is_dir() else []
    if not files:
        return "no Set5 folder: PSNR not measured"
    gains, psnrs = [], []
    for f in files:
        hr = torch.from_numpy(_read_rgb(f)).permute(2, 0, 1)[None].float() / 255
        lr = F.interpolate(hr, scale_factor=1 / scale, mode="bicubic", antialias=True).clamp(0, 1)
        bic = F.interpolate(lr, scale_factor=scale, mode="bicubic").clamp(0, 1)
        sr = model(lr).clamp(0, 1)
        psnrs.append(_psnr(sr, hr))
        gains.append(_psnr(sr, hr) - _psnr(bic, hr))
    return f"Set5 RGB PSNR {np.mean(psnrs):.2f} dB, {np.mean(gains):+.2f} dB over bicubic"


def save(model: H.HyReSR, path: Path, note: str) -> None:
    from hyresr_arch.tools.checkpoints import save_state_dict

    # floats as fp16 (half the size; spandrel loads them into the fp32 model); hyresr_meta stays int
    sd = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    # one metadata entry: safetensors writes several in no fixed order, and the files should be reproducible
    meta = {"description": f"{note}; hyperparameters {json.dumps(model.hyperparameters, default=list)}"}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_state_dict(sd, path, meta)  # atomic, with the usual file mode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DATA / "train_B100",
                        help="HR training photos (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=OUT, help="where the model files go (default: %(default)s)")
    parser.add_argument("--steps-scale", type=float, default=1.0, help="multiply every model's training steps")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)  # reproducible reductions; the machine is shared anyway
    photos, source = load_photos(args.data)
    print(f"training data: {source}")
    for name, builder, kwargs, fused, steps in MODELS:
        start = time.perf_counter()
        steps = max(1, round(steps * args.steps_scale))
        model = train(builder, kwargs, photos, steps)
        if fused:
            model.fuse()
        quality = psnr_gain(model, kwargs["scale"], DATA / "val_Set5")
        note = (f"HyReSR spandrel test model: {builder} {kwargs}{' fused' if fused else ''}, {steps} L1 steps "
                f"on {source}; for tests only")
        save(model, args.out / name, note)
        size = (args.out / name).stat().st_size
        print(f"{name}: {steps} steps in {time.perf_counter() - start:.0f} s, {size / 1e3:.0f} KB, {quality}")
    if args.out.resolve() == OUT.resolve():
        from hyresr_arch.tools import contrib

        changed = contrib.write_generated()
        print(f"hyresr contrib: {len(changed)} generated files rewritten to match")
    return 0


if __name__ == "__main__":
    sys.exit(main())
