"""Peak memory of ``hyresr upscale`` (CPU): one large tiled image, and growth over many images.

    python benchmarks/memory.py large   [--size 2048] [--scale 4] [--tile 256]
    python benchmarks/memory.py many    [--count 50] [--size 64]
    python benchmarks/memory.py all     (both, prints one JSON object)

``large``: a random-weight hyresr_tiny x4 checkpoint and a random SIZE x SIZE RGB PNG are written to
a temporary folder, then ``python -m hyresr_arch.cli upscale --tile N`` runs in a child process; its
peak RSS is read with ``os.wait4`` (the kernel's ru_maxrss of exactly that child).

``many``: the CLI runs COUNT images in one process; a small wrapper around the CLI records the
process's current RSS (``/proc/self/statm``) after each image is written, so RSS after image 5 and
after image COUNT can be compared (growth would mean a leak across images).

Every run uses one thread (``OMP_NUM_THREADS=1``, ``torch.set_num_threads(1)``); numbers are for
Linux (ru_maxrss in KiB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Runs inside the child for `many`: the real CLI, with RSS recorded after each written image.
_MANY_CHILD = r"""
import json, os, sys
import torch
torch.set_num_threads(1)
from hyresr_arch.cli import main
from hyresr_arch.tools import images

page = os.sysconf("SC_PAGE_SIZE")
samples = []
_write = images.write_image

def write_and_sample(path, img, quality=95):
    _write(path, img, quality)
    with open("/proc/self/statm") as f:
        samples.append(int(f.read().split()[1]) * page)

images.write_image = write_and_sample
rc = main(sys.argv[2:])
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "rss_bytes": samples}, f)
sys.exit(rc)
"""


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_measured(argv: list[str], timeout: float) -> tuple[int, int, float]:
    """(exit code, peak RSS bytes, seconds) of one child process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = t0 + timeout
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            proc.kill()
            pid, status, usage = os.wait4(proc.pid, 0)
            break
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.returncode != 0:
        print(err[-2000:], file=sys.stderr)
    return proc.returncode, usage.ru_maxrss * 1024, time.perf_counter() - t0


def _checkpoint(folder: Path, scale: int) -> Path:
    import torch

    import hyresr_arch as H

    torch.manual_seed(0)
    model = H.hyresr_tiny(scale=scale)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
    path = folder / f"hyresr_tiny_x{scale}.safetensors"
    from hyresr_arch.tools.checkpoints import hyperparameter_metadata, save_state_dict

    save_state_dict(model.state_dict(), path, hyperparameter_metadata(model))
    return path


def _png(path: Path, size: int, seed: int) -> None:
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    # smooth random content (a noise field upsampled) so PNG sizes and the model's work are realistic
    small = rng.integers(0, 256, (max(2, size // 16), max(2, size // 16), 3), dtype=np.uint8)
    img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    cv2.imwrite(str(path), img)


def measure_large(size: int = 2048, scale: int = 4, tile: int = 256, timeout: float = 1800) -> dict:
    with tempfile.TemporaryDirectory(prefix="hyresr-mem-") as tmp:
        tmp = Path(tmp)
        ckpt = _checkpoint(tmp, scale)
        img = tmp / "big.png"
        _png(img, size, 0)
        # baseline: the same interpreter with the same imports and the model loaded, nothing upscaled
        base_rc, base_rss, _ = _run_measured([sys.executable, "-c", (
            "import torch; torch.set_num_threads(1); import cv2, numpy, spandrel;"
            "from hyresr_arch.tools import upscale;"
            f"upscale.load_runner({str(ckpt)!r}, 'cpu')")], timeout)
        rc, rss, secs = _run_measured([sys.executable, "-m", "hyresr_arch.cli", "upscale", "-m", str(ckpt), str(img),
                                       "-o", str(tmp / "out"), "--tile", str(tile), "--device", "cpu", "--quiet"],
                                      timeout)
        out = tmp / "out" / "big.png"
        ok = rc == 0 and out.is_file()
        if ok:
            import cv2

            h, w = cv2.imread(str(out), cv2.IMREAD_UNCHANGED).shape[:2]
            ok = (h, w) == (size * scale, size * scale)
    return {
        "input": f"{size}x{size} RGB", "scale": scale, "tile": tile, "variant": "hyresr_tiny",
        "ok": bool(ok and base_rc == 0), "seconds": round(secs, 1),
        "peak_rss_mib": round(rss / 2**20, 1), "baseline_rss_mib": round(base_rss / 2**20, 1),
        "output_float32_mib": round(3 * (size * scale) ** 2 * 4 / 2**20, 1),
    }


def measure_many(count: int = 50, size: int = 64, scale: int = 2, timeout: float = 1200) -> dict:
    with tempfile.TemporaryDirectory(prefix="hyresr-mem-") as tmp:
        tmp = Path(tmp)
        ckpt = _checkpoint(tmp, scale)
        src = tmp / "in"
        src.mkdir()
        for i in range(count):
            _png(src / f"img{i:03d}.png", size, i)
        report = tmp / "rss.json"
        rc, peak, secs = _run_measured([sys.executable, "-c", _MANY_CHILD, str(report), "upscale", "-m", str(ckpt),
                                        str(src), "-o", str(tmp / "out"), "--device", "cpu", "--quiet"], timeout)
        data = json.loads(report.read_text()) if report.is_file() else {"rc": rc, "rss_bytes": []}
        written = len(list((tmp / "out").glob("*.png"))) if (tmp / "out").is_dir() else 0
    rss = data["rss_bytes"]
    mib = [r / 2**20 for r in rss]
    return {
        "images": count, "size": f"{size}x{size}", "scale": scale, "variant": "hyresr_tiny",
        "ok": rc == 0 and written == count and len(rss) == count, "seconds": round(secs, 1),
        "rss_after_5_mib": round(mib[4], 1) if len(mib) >= 5 else None,
        "rss_after_last_mib": round(mib[-1], 1) if mib else None,
        "growth_5_to_last_mib": round(mib[-1] - mib[4], 1) if len(mib) >= 5 else None,
        "max_rss_after_5_mib": round(max(mib[4:]), 1) if len(mib) >= 5 else None,
        "peak_rss_mib": round(peak / 2**20, 1),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=("large", "many", "all"))
    ap.add_argument("--size", type=int, default=None)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--tile", type=int, default=256)
    ap.add_argument("--count", type=int, default=50)
    args = ap.parse_args(argv)
    result = {}
    if args.what in ("large", "all"):
        result["large"] = measure_large(args.size or 2048, args.scale, args.tile)
    if args.what in ("many", "all"):
        result["many"] = measure_many(args.count, args.size if args.what == "many" and args.size else 64)
    print(json.dumps(result, indent=2))
    return 0 if all(r["ok"] for r in result.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
