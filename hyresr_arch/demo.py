"""`hyresr demo`: the quick start, end to end on CPU.

1. makes a small paired x2 dataset (HR tiles + MATLAB-style bicubic LR) from the photos that
   scikit-image ships (no download), or from ``--data DIR``; two images are held out;
2. writes a BasicSR option file and trains ``hyresr_tiny`` x2 through BasicSR's own
   ``train_pipeline`` (the same code path as ``python -m registry_hooks.basicsr -opt ...``);
3. measures PSNR (Y channel, crop_border = scale) of the model and of bicubic on the held-out images;
4. fuses the re-parameterizable convs, saves the fused weights as .safetensors, and upscales a sample.

Everything goes under ``--out`` (default ``hyresr_demo_out/``). A rerun with the same ``--out``
replaces the previous run there (it says so when it deletes the previous experiment folder); give
another ``--out`` to keep both.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

SCALE = 2
VAL_IMAGES = ("chelsea", "coffee")  # held out, never trained on
# photos bundled inside the scikit-image wheel (skimage/data/*), loaded by name: no download
TRAIN_IMAGES = (
    "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "colorwheel",
    "camera", "brick", "grass", "gravel", "moon", "coins", "cell", "page",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
RUN_NAME = "demo_hyresr_tiny_x2"  # BasicSR's experiment name: experiments/<RUN_NAME>/ under --out
TILE = 128  # HR training tiles (BasicSR's extract_subimages habit: small files load fast)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="hyresr_demo_out",
                        help="output folder (default: %(default)s); a rerun replaces the previous run in it")
    parser.add_argument("--data", default=None,
                        help="folder of your own HR images (>= 3 images; the last 2, sorted by name, are held out); "
                             "default: the sample photos bundled with scikit-image")
    parser.add_argument("--iters", type=int, default=1200, help="training iterations (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=4, help="batch size (default: %(default)s)")
    parser.add_argument("--patch", type=int, default=32, help="LR patch size (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: all cores)")
    parser.add_argument("--seed", type=int, default=0)


# -- data -------------------------------------------------------------------------------------

def _to_rgb_uint8(img):
    import numpy as np

    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (np.clip(img.astype(np.float64), 0, 1 if img.max() <= 1 else 255) *
               (255 if img.max() <= 1 else 1)).round().astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    return np.ascontiguousarray(img[..., :3])


def _skimage_photos(names):
    import skimage.data

    photos = {}
    for name in names:
        try:
            photos[name] = _to_rgb_uint8(getattr(skimage.data, name)())
        except Exception as err:  # noqa: BLE001  (an image missing from an odd skimage build: skip it)
            print(f"  skipping skimage.data.{name}: {err}")
    return photos


def _user_photos(folder: Path):
    import cv2

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 3:
        raise SystemExit(f"--data {folder}: need at least 3 images, found {len(files)}")
    photos = {}
    for p in files:
        img = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if img is None:
            raise SystemExit(f"cannot read image {p}")
        photos[p.stem] = img[..., ::-1].copy()
    names = list(photos)
    return {k: photos[k] for k in names[:-2]}, {k: photos[k] for k in names[-2:]}


def _downscale(hr_rgb, scale: int):
    """MATLAB-compatible bicubic downscale (BasicSR's imresize), uint8 in, uint8 out."""
    import numpy as np
    from basicsr.utils.matlab_functions import imresize

    lr = imresize(hr_rgb.astype(np.float32) / 255.0, 1 / scale)
    return (np.clip(lr, 0, 1) * 255.0).round().astype(np.uint8)


def _upscale_bicubic(lr_rgb, scale: int):
    import numpy as np
    from basicsr.utils.matlab_functions import imresize

    up = imresize(lr_rgb.astype(np.float32) / 255.0, scale)
    return (np.clip(up, 0, 1) * 255.0).round().astype(np.uint8)


def _write(path: Path, rgb) -> None:
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), rgb[..., ::-1]):
        raise OSError(f"could not write {path}")


def make_dataset(data_dir: Path, user_folder: str | None, scale: int = SCALE) -> dict:
    """HR/LR pairs under data_dir/{train,val}/{hr,lr}; returns a summary."""
    if user_folder:
        train, val = _user_photos(Path(user_folder))
        source = str(Path(user_folder).resolve())
    else:
        train, val = _skimage_photos(TRAIN_IMAGES), _skimage_photos(VAL_IMAGES)
        source = "scikit-image bundled photos (skimage.data)"
    if not train or len(val) < 1:
        raise SystemExit("no usable images")
    n_tiles = 0
    for name, img in train.items():
        h, w = (s - s % TILE for s in img.shape[:2])
        for y in range(0, max(h, TILE) - TILE + 1, TILE):
            for x in range(0, max(w, TILE) - TILE + 1, TILE):
                hr = img[y:y + TILE, x:x + TILE]
                if hr.shape[:2] != (TILE, TILE):
                    continue
                _write(data_dir / "train" / "hr" / f"{name}_{y:04d}_{x:04d}.png", hr)
                _write(data_dir / "train" / "lr" / f"{name}_{y:04d}_{x:04d}.png", _downscale(hr, scale))
                n_tiles += 1
    for name, img in val.items():
        m = 8 * scale  # keep the LR a multiple of 8 so no padding is involved in the comparison
        h, w = (s - s % m for s in img.shape[:2])
        hr = img[:h, :w]
        _write(data_dir / "val" / "hr" / f"{name}.png", hr)
        _write(data_dir / "val" / "lr" / f"{name}.png", _downscale(hr, scale))
    return {"source": source, "train_images": list(train), "train_tiles": n_tiles, "val_images": list(val)}


# -- the BasicSR option file --------------------------------------------------------------------

def make_options(out: Path, data_dir: Path, args: argparse.Namespace, name: str) -> dict:
    iters = args.iters
    print_freq = max(1, min(50, iters // 20))
    return {
        "name": name,
        "model_type": "SRModel",
        "scale": SCALE,
        "num_gpu": 0,  # CPU
        "manual_seed": args.seed,
        "datasets": {
            "train": {
                "name": "demo_train", "type": "PairedImageDataset",
                "dataroot_gt": str(data_dir / "train" / "hr"), "dataroot_lq": str(data_dir / "train" / "lr"),
                "io_backend": {"type": "disk"}, "filename_tmpl": "{}",
                "gt_size": args.patch * SCALE, "use_hflip": True, "use_rot": True,
                "use_shuffle": True, "num_worker_per_gpu": 1, "batch_size_per_gpu": args.batch,
                "dataset_enlarge_ratio": 100, "prefetch_mode": None,
            },
            "val": {
                "name": "demo_val", "type": "PairedImageDataset",
                "dataroot_gt": str(data_dir / "val" / "hr"), "dataroot_lq": str(data_dir / "val" / "lr"),
                "io_backend": {"type": "disk"},
            },
        },
        "network_g": {"type": "hyresr_tiny", "upscale": SCALE},
        "path": {"pretrain_network_g": None, "strict_load_g": True, "resume_state": None},
        "train": {
            # short run: a short EMA horizon (BasicSR's EMA has no warm-up)
            "ema_decay": 0.99,
            # BasicSR 1.4.2's SRModel knows only Adam (no AdamW)
            "optim_g": {"type": "Adam", "lr": 1e-3, "weight_decay": 0, "betas": [0.9, 0.99]},
            "scheduler": {"type": "CosineAnnealingRestartLR", "periods": [iters], "restart_weights": [1],
                          "eta_min": 1e-5},
            "total_iter": iters, "warmup_iter": -1,
            "pixel_opt": {"type": "L1Loss", "loss_weight": 1.0, "reduction": "mean"},
        },
        "val": {
            "val_freq": iters, "save_img": False,
            "metrics": {"psnr": {"type": "calculate_psnr", "crop_border": SCALE, "test_y_channel": True}},
        },
        "logger": {"print_freq": print_freq, "save_checkpoint_freq": iters, "use_tb_logger": False,
                   "wandb": {"project": None, "resume_id": None}},
        "dist_params": {"backend": "gloo", "port": 29500},
    }


# -- evaluation ---------------------------------------------------------------------------------

def _y_psnr(img, ref, crop: int) -> float:
    from basicsr.metrics import calculate_psnr

    return float(calculate_psnr(img, ref, crop_border=crop, input_order="HWC", test_y_channel=True))


def _run_model(model, lr_rgb):
    import numpy as np
    import torch

    x = torch.from_numpy(lr_rgb.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.inference_mode():
        y = model(x)[0].clamp(0, 1).permute(1, 2, 0).numpy()
    return (y * 255.0).round().astype(np.uint8)


def evaluate(model, val_dir: Path, scale: int) -> list[dict]:
    import cv2

    rows = []
    for hr_path in sorted((val_dir / "hr").glob("*.png")):
        hr = cv2.imread(str(hr_path))[..., ::-1]
        lr = cv2.imread(str(val_dir / "lr" / hr_path.name))[..., ::-1]
        # calculate_psnr expects BGR when converting to Y
        sr = _run_model(model, lr)
        bic = _upscale_bicubic(lr, scale)
        rows.append({
            "image": hr_path.stem,
            "psnr_model": _y_psnr(sr[..., ::-1], hr[..., ::-1], scale),
            "psnr_bicubic": _y_psnr(bic[..., ::-1], hr[..., ::-1], scale),
        })
    return rows


# -- fused weights --------------------------------------------------------------------------------

def fuse_and_save(model, lr_rgb, path: Path):
    """Fuse the model in place and save its weights like every other tool does (atomically, with
    the usual file mode and the hyperparameters as metadata); return the fused model's output on
    ``lr_rgb`` and its largest difference from the unfused output, in grey levels."""
    from hyresr_arch.tools.checkpoints import hyperparameter_metadata, save_state_dict

    before = _run_model(model, lr_rgb)
    model.fuse()
    after = _run_model(model, lr_rgb)
    save_state_dict(model.state_dict(), path, hyperparameter_metadata(model))
    return after, int(abs(before.astype(int) - after.astype(int)).max())


# -- a rerun ----------------------------------------------------------------------------------------

def replace_previous_run(out: Path, keep: str | None = None, log=print) -> list[Path]:
    """A rerun starts clean and says so: the previous run's generated dataset (``data/``) and its
    BasicSR experiment folder (BasicSR would rename that to *_archived_<time> and keep every old run)
    are deleted; the option file, checkpoint copies, ``sample/`` and ``demo_result.json`` are
    overwritten by this run. ``keep`` (the user's --data folder) is never deleted. Returns what was
    deleted."""
    import shutil

    keep_path = Path(keep).resolve() if keep else None
    gone = []
    for folder in (out / "data", out / "experiments" / RUN_NAME):
        if not folder.exists():
            continue
        if keep_path is not None and (keep_path == folder.resolve() or folder.resolve() in keep_path.parents):
            continue
        gone.append(folder)
    if gone:
        log(f"[hyresr demo] a previous run is in {out}: deleting {' and '.join(str(g) for g in gone)}; "
            f"this run replaces it (give --out DIR to keep a run)")
        for folder in gone:
            shutil.rmtree(folder)
    return gone


# -- main -----------------------------------------------------------------------------------------

def main(args: argparse.Namespace) -> int:
    t0 = time.time()
    from hyresr_arch.tools.deps import MissingDependency, require_all

    try:
        require_all(("basicsr", "yaml"), "the quick start (hyresr demo)")
        if not args.data:
            require_all(("skimage",), "the quick start's sample photos", "or give --data DIR")
    except MissingDependency as e:
        print(f"hyresr demo: {e}", file=sys.stderr)
        return 2
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from hyresr_arch.tools.hosts import prepare_basicsr, run_basicsr

    prepare_basicsr()  # compat shim + basicsr + HyReSR registered in its ARCH_REGISTRY
    import yaml

    import hyresr_arch

    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    data_dir = out / "data"
    name = RUN_NAME
    replace_previous_run(out, args.data)

    print(f"[hyresr demo] 1/4 making the dataset in {data_dir}", flush=True)
    info = make_dataset(data_dir, args.data)
    print(f"  source: {info['source']}\n  train: {len(info['train_images'])} images -> {info['train_tiles']} "
          f"HR tiles of {TILE}px; held out: {', '.join(info['val_images'])}", flush=True)

    opt = make_options(out, data_dir, args, name)
    opt_path = out / f"{name}.yml"
    opt_path.write_text("# written by `hyresr demo`: BasicSR 1.4.2 option file, hyresr_tiny x2 on CPU\n"
                        + yaml.safe_dump(opt, sort_keys=False))
    exp_dir = out / "experiments" / name

    print(f"[hyresr demo] 2/4 training hyresr_tiny x2 for {args.iters} iterations through BasicSR's "
          f"train_pipeline ({opt_path}); BasicSR logs every {opt['logger']['print_freq']} iterations", flush=True)
    t_train = time.time()
    run_basicsr(["-opt", str(opt_path)], root_path=str(out))
    t_train = time.time() - t_train
    ckpt = exp_dir / "models" / "net_g_latest.pth"
    if not ckpt.exists():
        print(f"[hyresr demo] training produced no checkpoint at {ckpt}", file=sys.stderr)
        return 1

    print("[hyresr demo] 3/4 PSNR on the held-out images (Y channel, crop_border=2)", flush=True)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    model = hyresr_arch.build_from_state_dict(hyresr_arch.unwrap_state_dict(state)).eval()
    rows = evaluate(model, data_dir / "val", SCALE)
    for r in rows:
        print(f"  {r['image']:>12}: bicubic {r['psnr_bicubic']:.2f} dB, hyresr_tiny {r['psnr_model']:.2f} dB, "
              f"gain {r['psnr_model'] - r['psnr_bicubic']:+.2f} dB")
    mean_model = sum(r["psnr_model"] for r in rows) / len(rows)
    mean_bic = sum(r["psnr_bicubic"] for r in rows) / len(rows)
    gain = mean_model - mean_bic

    print("[hyresr demo] 4/4 fusing, saving, upscaling a sample", flush=True)
    import cv2

    val_lr = sorted((data_dir / "val" / "lr").glob("*.png"))[0]
    lr = cv2.imread(str(val_lr))[..., ::-1].copy()
    fused_path = out / "hyresr_tiny_x2_fused.safetensors"
    after, fuse_diff = fuse_and_save(model, lr, fused_path)
    ckpt_copy = out / "hyresr_tiny_x2.pth"
    torch.save(state, ckpt_copy)
    sample_dir = out / "sample"
    _write(sample_dir / f"{val_lr.stem}_lr.png", lr)
    _write(sample_dir / f"{val_lr.stem}_bicubic_x2.png", _upscale_bicubic(lr, SCALE))
    _write(sample_dir / f"{val_lr.stem}_hyresr_x2.png", after)

    total = time.time() - t0
    summary = {"psnr_model": mean_model, "psnr_bicubic": mean_bic, "psnr_gain": gain, "per_image": rows,
               "iters": args.iters, "train_seconds": round(t_train, 1), "total_seconds": round(total, 1),
               "fused_vs_unfused_max_abs_diff_uint8": fuse_diff, "checkpoint": str(ckpt),
               "fused": str(fused_path), "dataset": info}
    (out / "demo_result.json").write_text(json.dumps(summary, indent=2))
    print(f"""
[hyresr demo] done in {total / 60:.1f} min (training {t_train / 60:.1f} min)
  dataset            {data_dir}
  BasicSR options    {opt_path}
  BasicSR run        {exp_dir}  (log, net_g_latest.pth with params / params_ema)
  checkpoint         {ckpt_copy}
  fused weights      {fused_path}  (fused vs unfused: max {fuse_diff} grey level)
  sample             {sample_dir}  (lr / bicubic / hyresr)
  summary            {out / 'demo_result.json'}
  PSNR (Y, held-out) hyresr_tiny {mean_model:.2f} dB vs bicubic {mean_bic:.2f} dB: gain {gain:+.2f} dB""", flush=True)
    if gain <= 0:
        print("[hyresr demo] warning: no gain over bicubic; train longer (--iters)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="hyresr demo")
    configure(p)
    sys.exit(main(p.parse_args()))
