"""What a new user hit with the ``hyresr`` command: one test (or more) per point.

Each failure must be one line that names the problem and what to do; a batch goes on where it can;
nothing is left half-written or behind; outputs are reproducible. Everything runs through
``hyresr_arch.cli.main`` (the real parser) or a real subprocess, with the real spandrel and
onnxruntime; missing packages are simulated with ``sys.modules[name] = None``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import safetensors
import torch

from conftest import ROOT, perturb

import hyresr_arch as H
from hyresr_arch.cli import main as cli
from hyresr_arch.tools import checkpoints, export_onnx, files, runners
from hyresr_arch.tools.deps import MissingDependency
from hyresr_arch.tools.images import read_image, to_array, to_tensor

torch.set_num_threads(1)

STATIC = 64  # the fixed size of the static ONNX export below


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return perturb(H.hyresr_tiny(scale=2), seed=3).eval()


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny):
    path = tmp_path_factory.mktemp("ckpt") / "net_g_100.pth"
    torch.save({"params": tiny.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("onnx")
    quiet = lambda *_: None  # noqa: E731
    export_onnx.export_model(tiny, d / "dyn.onnx", verify_sizes=[(1, 8, 8)], log=quiet)
    export_onnx.export_model(tiny, d / "static.onnx", static=(STATIC, STATIC), log=quiet)
    export_onnx.export_model(tiny, d / "fp16.onnx", fp16=True, verify_sizes=[(1, 8, 8)], log=quiet)
    return {"dyn": d / "dyn.onnx", "static": d / "static.onnx", "fp16": d / "fp16.onnx"}


@pytest.fixture(scope="module")
def photo():
    from skimage import data

    return np.ascontiguousarray(data.chelsea()[50:250, 100:300])  # RGB uint8


def _write_png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))
    return path


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# --------------------------------------------------------------------------- 1. static ONNX models


def test_static_onnx_model_upscales_every_size_and_the_batch_goes_on(tmp_path, tiny, onnx_models, photo, capsys):
    """A graph exported with --static takes one size only: smaller images are padded to it, larger
    ones cut into windows of it (on the attention grid); every image of the batch is written."""
    src, out = tmp_path / "in", tmp_path / "out"
    sizes = {"exact.png": (STATIC, STATIC), "small.png": (20, 24), "large.png": (100, 130)}
    for name, (h, w) in sizes.items():
        _write_png(src / name, photo[:h, :w])
    rc = cli(["upscale", "-m", str(onnx_models["static"]), str(src), "-o", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 0, err
    for name, (h, w) in sizes.items():
        got = read_image(out / name).color
        assert got.shape == (2 * h, 2 * w, 3), name
        with torch.inference_mode():
            ref = to_array(tiny(to_tensor(read_image(src / name).color)))
        d = np.abs(got - ref)
        if name == "exact.png":  # the graph's own size: the model itself
            assert d.max() <= 1 / 255 + 1e-6
        elif name == "large.png":  # windows on the grid with context: a tiling-sized difference
            assert d.mean() < 0.5 / 255 and d.max() < 8 / 255, (d.mean() * 255, d.max() * 255)
        else:  # padded to 64 x 64: the model sees more (mirrored) image around it than PyTorch does
            assert d.mean() < 3 / 255, d.mean() * 255


def test_an_input_onnxruntime_refuses_is_one_line_not_a_traceback(onnx_models):
    runner = runners.load_runner(str(onnx_models["static"]))
    with pytest.raises(RuntimeError) as info:
        runner(torch.rand(1, 4, STATIC, STATIC))  # 4 channels into a 3-channel graph
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("onnxruntime cannot run static.onnx on a 64x64 input")


# --------------------------------------------------------------------------- 2. optional packages

MISSING = [  # (case, argv template, module made unimportable, extra the message must name)
    ("info-pth", ["info", "{ckpt}"], "spandrel", "spandrel"),
    ("fuse", ["fuse", "{ckpt}", "{tmp}/o.safetensors"], "spandrel", "spandrel"),
    ("upscale-pth", ["upscale", "-m", "{ckpt}", "{img}", "-o", "{tmp}/out", "--quiet"], "spandrel", "spandrel"),
    ("upscale-onnx", ["upscale", "-m", "{dyn}", "{img}", "-o", "{tmp}/out", "--quiet"], "onnxruntime", "onnx"),
    ("export-onnx", ["export-onnx", "{ckpt}", "{tmp}/o.onnx"], "onnx", "onnx"),
    ("export-onnx-ort", ["export-onnx", "{ckpt}", "{tmp}/o.onnx"], "onnxruntime", "onnx"),
    ("info-onnx", ["info", "{dyn}"], "onnx", "onnx"),
    ("release", ["release", "{ckpt}", "--name", "2x-T", "-o", "{tmp}/rel"], "spandrel", "spandrel"),
    ("release-ort", ["release", "{ckpt}", "--name", "2x-T", "-o", "{tmp}/rel"], "onnxruntime", "onnx"),
    ("release-sample", ["release", "{ckpt}", "--name", "2x-T", "-o", "{tmp}/rel"], "skimage", "basicsr"),
    ("demo", ["demo", "--out", "{tmp}/demo"], "basicsr", "basicsr"),
]


@pytest.mark.parametrize(("case", "argv", "module", "extra"), MISSING, ids=[m[0] for m in MISSING])
def test_a_missing_optional_package_is_one_line_naming_the_extra(tmp_path, ckpt, onnx_models, monkeypatch,
                                                                 capsys, case, argv, module, extra):
    img = _write_png(tmp_path / "a.png", np.zeros((12, 10, 3), np.uint8))
    argv = [a.format(ckpt=ckpt, tmp=tmp_path, img=img, dyn=onnx_models["dyn"]) for a in argv]
    before = set(tmp_path.iterdir())
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now fails as if not installed
    assert cli(argv) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"hyresr {argv[0]}: ") and f'pip install "hyresr[{extra}]"' in line, line
    assert set(tmp_path.iterdir()) == before  # nothing written, no output folder


@pytest.mark.parametrize(("module", "call"), [
    ("spandrel", lambda p: checkpoints.load_descriptor(p["ckpt"])),
    ("spandrel", lambda p: runners.load_runner(str(p["ckpt"]))),
    ("onnxruntime", lambda p: runners.load_runner(str(p["dyn"]))),
    ("onnx", lambda p: export_onnx.export_model(p["tiny"], p["tmp"] / "m.onnx")),
])
def test_the_python_api_names_the_extra_too(tmp_path, tiny, ckpt, onnx_models, monkeypatch, module, call):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(MissingDependency, match=re.escape("pip install \"hyresr[")):
        call({"ckpt": ckpt, "dyn": onnx_models["dyn"], "tiny": tiny, "tmp": tmp_path})


# --------------------------------------------------------------------------- 3. not a checkpoint at all


def _not_checkpoints(tiny) -> dict[str, tuple[bytes, str]]:
    import io

    import safetensors.torch

    buf = io.BytesIO()
    torch.save({"params": tiny.state_dict()}, buf)
    return {
        "notes.pth": (b"my training notes: lr 2e-4, 100k iterations\n", "not a PyTorch checkpoint: it is a text file"),
        "page.pth": (b"<!DOCTYPE html>\n<html><body>Sign in</body></html>\n", "an HTML page"),
        "weights.pth": (safetensors.torch.save({"x": torch.zeros(2)}), "it is a safetensors file (name it .safetensors)"),
        "weights.safetensors": (buf.getvalue(), "not a safetensors file: it is a PyTorch zip archive (name it .pth)"),
    }


@pytest.mark.parametrize("name", ["notes.pth", "page.pth", "weights.pth", "weights.safetensors"])
def test_a_file_that_is_not_a_checkpoint_is_named_for_what_it_is(tmp_path, tiny, capsys, name):
    content, needle = _not_checkpoints(tiny)[name]
    path = tmp_path / name
    path.write_bytes(content)
    for argv in (["info", str(path)], ["fuse", str(path), str(tmp_path / "o.safetensors")]):
        assert cli(argv) == 2
        line = _one_line(capsys.readouterr().err)
        assert str(path) in line and needle in line and "KeyError" not in line, line


# --------------------------------------------------------------------------- 4. another architecture


def test_another_architecture_gets_one_wording_from_every_command(tmp_path, capsys):
    from spandrel.architectures.Compact import Compact

    path = tmp_path / "compact.pth"
    torch.save(Compact(num_feat=8, num_conv=2, upscale=2).state_dict(), path)
    img = _write_png(tmp_path / "a.png", np.zeros((12, 10, 3), np.uint8))
    messages = {}
    for argv in (["info", str(path)],
                 ["upscale", "-m", str(path), str(img), "-o", str(tmp_path / "up"), "--quiet"],
                 ["fuse", str(path), str(tmp_path / "o.safetensors")],
                 ["export-onnx", str(path), str(tmp_path / "o.onnx")],
                 ["release", str(path), "--name", "2x-C", "-o", str(tmp_path / "rel")]):
        assert cli(argv) == 2, argv
        line = _one_line(capsys.readouterr().err)
        assert line.startswith(f"hyresr {argv[0]}: "), line
        messages[argv[0]] = line.split(": ", 1)[1]
    assert len(set(messages.values())) == 1, messages
    msg = messages["info"]
    assert msg.startswith(f"{path}: not a HyReSR state dict") and "spandrel detects a Compact model" in msg
    assert sorted(f.name for f in tmp_path.iterdir()) == ["a.png", "compact.pth"]


# --------------------------------------------------------------------------- 5. missing inputs


def test_missing_inputs_are_named_once_before_the_model_is_read(tmp_path, ckpt, capsys):
    unreadable_model = tmp_path / "notes.pth"
    unreadable_model.write_text("not a model\n")
    missing = tmp_path / "nope.png"
    rc = cli(["upscale", "-m", str(unreadable_model), str(missing), "-o", str(tmp_path / "o"), "--quiet"])
    line = _one_line(capsys.readouterr().err)
    assert rc == 2 and str(missing) in line and "no such file" in line
    assert "notes.pth" not in line  # the model was never read: the input was checked first

    good = _write_png(tmp_path / "good.png", np.full((12, 10, 3), 128, np.uint8))
    rc = cli(["upscale", "-m", str(ckpt), str(good), str(missing), "-o", str(tmp_path / "o"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("nope.png") == 1, err  # reported once, not again in the summary
    assert "upscaled 1/2" in err
    assert read_image(tmp_path / "o" / "good.png").color.shape == (24, 20, 3)


# --------------------------------------------------------------------------- 6. no empty output folder


def test_a_failed_upscale_leaves_no_output_folder_behind(tmp_path, ckpt, capsys):
    good = _write_png(tmp_path / "good.png", np.zeros((12, 10, 3), np.uint8))
    broken = tmp_path / "broken.png"
    broken.write_bytes(good.read_bytes()[:40])
    unreadable_model = tmp_path / "notes.pth"
    unreadable_model.write_text("not a model\n")
    out = tmp_path / "new" / "deeper"
    assert cli(["upscale", "-m", str(unreadable_model), str(good), "-o", str(out), "--quiet"]) == 2
    assert not (tmp_path / "new").exists()
    assert cli(["upscale", "-m", str(ckpt), str(broken), "-o", str(out), "--quiet"]) == 1
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    assert cli(["upscale", "-m", str(ckpt), str(broken), "-o", str(existing), "--quiet"]) == 1
    assert existing.is_dir()  # a folder the user had is never removed
    capsys.readouterr()


# --------------------------------------------------------------------------- 7. Ctrl-C


def _default_signals() -> None:
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, ckpt):
    src, out = tmp_path / "in", tmp_path / "out"
    rng = np.random.default_rng(1)
    n = 80
    for i in range(n):
        _write_png(src / f"img{i:03d}.png", rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hyresr_arch.cli", "upscale", "-m", str(ckpt), str(src), "-o", str(out), "--quiet"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        preexec_fn=_default_signals)
    try:
        end = time.monotonic() + 60
        while time.monotonic() < end and not (out.is_dir() and any(f.name.startswith("img") for f in out.iterdir())):
            time.sleep(0.05)
        assert out.is_dir(), "upscale wrote nothing within 60 s"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    line = _one_line(err)
    assert line == ("hyresr upscale: interrupted (Ctrl-C); files already written are complete, "
                    "nothing half-written was left")
    finals = [f for f in out.iterdir()]
    assert 0 < len(finals) < n and not any(".partial" in f.name for f in finals)


# --------------------------------------------------------------------------- 8. reproducible files


def test_safetensors_files_are_byte_identical_for_identical_inputs(tmp_path, ckpt, tiny, capsys):
    digests = set()
    for i in range(3):
        assert cli(["fuse", str(ckpt), str(tmp_path / f"f{i}.safetensors")]) == 0
        digests.add(files.sha256_of(tmp_path / f"f{i}.safetensors"))
    capsys.readouterr()
    assert len(digests) == 1
    meta = checkpoints.hyperparameter_metadata(tiny)
    for i in range(8):  # the writer alone: hash-ordered metadata differs between some of 8 saves
        checkpoints.save_state_dict(tiny.state_dict(), tmp_path / f"s{i}.safetensors", meta)
    assert len({files.sha256_of(tmp_path / f"s{i}.safetensors") for i in range(8)}) == 1
    with safetensors.safe_open(str(tmp_path / "s0.safetensors"), "pt") as f:  # still a valid file
        assert f.metadata() == meta
        assert torch.equal(f.get_tensor("stem.weight"), tiny.state_dict()["stem.weight"])


# --------------------------------------------------------------------------- 9. static output shape


def test_a_static_export_records_its_output_shape(onnx_models, capsys):
    out = onnx.load(str(onnx_models["static"])).graph.output[0]
    dims = out.type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [1, 3, 2 * STATIC, 2 * STATIC]
    assert not any(d.dim_param for d in dims)
    assert cli(["info", str(onnx_models["static"]), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["output"]["shape"] == [1, 3, 2 * STATIC, 2 * STATIC]


# --------------------------------------------------------------------------- 10. onnxruntime's warning


def _stderr_of(code: str, *args: str) -> str:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stderr


def test_loading_an_fp16_onnx_model_prints_no_warning(onnx_models):
    err = _stderr_of("import sys; from hyresr_arch.tools import runners; runners.load_runner(sys.argv[1])",
                     str(onnx_models["fp16"]))
    assert err == "", err
    # meaningful: onnxruntime with default session options does print it for this file
    control = _stderr_of("import sys, onnxruntime as ort; "
                         "ort.InferenceSession(sys.argv[1], providers=['CPUExecutionProvider'])",
                         str(onnx_models["fp16"]))
    assert "constant fold" in control


# --------------------------------------------------------------------------- 11. release


def test_release_refuses_to_replace_a_bundle_without_force(tmp_path, ckpt, capsys):
    out = tmp_path / "rel"
    out.mkdir()
    card = out / "2x-T.json"
    card.write_text('{"author": "someone else", "license": "CC-BY-4.0"}\n')
    before = card.read_bytes()
    assert cli(["release", str(ckpt), "--name", "2x-T", "-o", str(out), "--author", "me"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert str(out) in line and "2x-T.json" in line and "--force" in line
    assert card.read_bytes() == before and [f.name for f in out.iterdir()] == ["2x-T.json"]


def test_release_with_force_replaces_the_whole_bundle(tmp_path, tiny, capsys):
    fused = tmp_path / "fused.safetensors"
    checkpoints.save_state_dict(perturb(H.hyresr_tiny(scale=2), seed=3).eval().fuse().state_dict(), fused)
    out = tmp_path / "rel"
    out.mkdir()
    (out / "2x-T.json").write_text('{"author": "someone else"}\n')
    (out / "2x-T_unfused.safetensors").write_bytes(b"from an earlier release")  # not in the new bundle
    (out / "notes.txt").write_text("mine\n")
    assert cli(["release", str(fused), "--name", "2x-T", "-o", str(out), "--author", "me", "--force",
                "--no-ncnn"]) == 0
    capsys.readouterr()
    card = json.loads((out / "2x-T.json").read_text())
    assert card["author"] == "me"
    assert not (out / "2x-T_unfused.safetensors").exists()  # no stale file from the old bundle
    assert (out / "notes.txt").read_text() == "mine\n"  # not the bundle's: left alone
    assert card["images"] == [{"type": "standalone", "url": "2x-T_comparison.png"}]
    assert all(r["platform"] in ("pytorch", "onnx") and not r["urls"][0].endswith(".png") for r in card["resources"])
    assert not (out / "2x-T.param").exists()  # --no-ncnn


def test_the_default_comparison_sample_is_not_a_training_image():
    import skimage.data

    from hyresr_arch import demo
    from hyresr_arch.tools import release

    _, hr = release.sample_pair(2, None)
    template = (hr * 255 + 0.5).astype(np.uint8)
    th, tw = template.shape[:2]

    def holds(name: str) -> bool:
        img = demo._to_rgb_uint8(getattr(skimage.data, name)())
        if img.shape[0] < th or img.shape[1] < tw:
            return False
        res = cv2.matchTemplate(img, template, cv2.TM_SQDIFF)
        y, x = np.unravel_index(np.argmin(res), res.shape)
        return np.array_equal(img[y : y + th, x : x + tw], template)

    assert [n for n in demo.VAL_IMAGES if holds(n)] == [release.DEFAULT_SAMPLE]  # held out, and found
    assert not [n for n in demo.TRAIN_IMAGES if holds(n)]


# --------------------------------------------------------------------------- 12. tiny images


@pytest.mark.parametrize("size", [(7, 5), (3, 2)])  # reflect; too small to reflect: replicate
def test_onnx_and_pytorch_agree_on_tiny_images(tiny, onnx_models, size):
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ref = tiny(x).clamp(0, 1)
    y = runners.load_runner(str(onnx_models["dyn"]))(x)
    assert y.shape == ref.shape and (y - ref).abs().max() < 1e-3


def test_upscale_writes_the_same_7x5_image_from_onnx_and_pytorch(tmp_path, ckpt, onnx_models, capsys):
    img = _write_png(tmp_path / "t.png", np.random.default_rng(2).integers(0, 256, (7, 5, 3), dtype=np.uint8))
    for name, model in (("pt", ckpt), ("onnx", onnx_models["dyn"])):
        assert cli(["upscale", "-m", str(model), str(img), "-o", str(tmp_path / name), "--quiet"]) == 0
    capsys.readouterr()
    a, b = (cv2.imread(str(tmp_path / n / "t.png")).astype(int) for n in ("pt", "onnx"))
    assert a.shape == (14, 10, 3) and np.abs(a - b).max() <= 1


# --------------------------------------------------------------------------- 13. small items


def test_fuse_bench_on_a_fused_checkpoint_prints_its_timing(tmp_path, ckpt, capsys):
    fused = tmp_path / "fused.safetensors"
    assert cli(["fuse", str(ckpt), str(fused)]) == 0
    capsys.readouterr()
    assert cli(["fuse", str(fused), str(tmp_path / "again.safetensors"), "--bench"]) == 0
    text = capsys.readouterr().out
    assert "already fused" in text and re.search(r"CPU forward 64x64 .*: fused \d+\.\d ms", text), text


def test_quickstart_help_installs_nothing(tmp_path):
    repo = tmp_path / "repo"
    for rel in ("scripts/quickstart.sh", "scripts/_venv.sh", "hyresr_arch/demo.py"):
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, repo / rel)
    # no package index: were the script to install anything, pip would fail at once, not download
    env = dict(os.environ, PYTHON=sys.executable, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    env.pop("VIRTUAL_ENV", None)
    r = subprocess.run(["bash", str(repo / "scripts/quickstart.sh"), "--iters", "5", "--help"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "--iters" in r.stdout and "TORCH_SPEC" in r.stdout and "replaces the previous run" in r.stdout
    assert not (repo / ".venv").exists() and "installing" not in r.stdout + r.stderr


def test_a_demo_rerun_says_what_it_replaces(tmp_path, capsys):
    from hyresr_arch import demo

    out = tmp_path / "demo_out"
    (out / "data" / "train").mkdir(parents=True)
    exp = out / "experiments" / demo.RUN_NAME
    (exp / "models").mkdir(parents=True)
    (exp / "models" / "net_g_latest.pth").write_bytes(b"old")
    assert demo.replace_previous_run(out) == [out / "data", exp]
    line = _one_line(capsys.readouterr().out)
    assert str(out / "data") in line and str(exp) in line and "--out" in line
    assert not (out / "data").exists() and not exp.exists()
    assert demo.replace_previous_run(out) == [] and capsys.readouterr().out == ""  # nothing to say
    (out / "data" / "mine").mkdir(parents=True)  # the user's --data inside it is never deleted
    assert demo.replace_previous_run(out, keep=str(out / "data" / "mine")) == []
    assert (out / "data" / "mine").is_dir()


def test_readme_says_what_the_default_torch_wheel_brings_and_how_to_pick_a_cpu_one():
    readme = (ROOT / "README.md").read_text()
    default = re.search(r'TORCH_SPEC:-torch==([\w.]+)', (ROOT / "scripts/_venv.sh").read_text()).group(1)
    assert f'TORCH_SPEC="torch=={default}+cpu"' in readme  # the same version as the default, CPU build
    assert "PIP_EXTRA_INDEX_URL" in readme and "NVIDIA" in readme
    quick = readme[readme.index("## Quick start"):readme.index("## The pack")]
    assert "rerun" in quick and "hyresr_demo_out" in quick


def test_spandrel_contrib_readme_states_the_real_size_of_its_test_models():
    text = (ROOT / "contrib/spandrel/README.md").read_text()
    stated = float(re.search(r"fp16, ([\d.]+) MB together", text).group(1))
    total = sum(f.stat().st_size for f in (ROOT / "contrib/spandrel/tests/models").glob("*.safetensors"))
    assert stated == round(total / 1e6, 1), total


def test_install_refusal_goes_to_stderr_in_one_line(tmp_path, capsys):
    from registry_hooks import neosr

    root = tmp_path / "neosr"
    for marker in neosr.MARKERS:
        (root / marker).parent.mkdir(parents=True, exist_ok=True)
        (root / marker).write_text("# host file\n")
    argv = ["install", "--host", "neosr", "--root", str(root)]
    assert cli(argv) == 0
    capsys.readouterr()
    (root / neosr.ARCH_DEST).write_text("# the user's edited copy\n")
    assert cli(argv) == 1
    captured = capsys.readouterr()
    line = _one_line(captured.err)
    assert "refusing" in line and str(root / neosr.ARCH_DEST) in line and "--force" in line
    assert "refusing" not in captured.out
