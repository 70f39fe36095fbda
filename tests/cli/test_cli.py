"""The ``hyresr`` deployment commands end to end: fuse, info, upscale, export-onnx, release.

Run through ``hyresr_arch.cli.main`` (the real argument parser), on hyresr_tiny x2 checkpoints
and 24x20 images. Covers the safety rules: unsafe pickles refused (and proven not to run),
corrupt/other-architecture checkpoints named, bad images skipped with a non-zero exit, inputs
never overwritten, atomic writes.
"""

from __future__ import annotations

import json
import os
import pickle

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import safetensors.torch
import torch

from conftest import perturbed as perturb

import hyresr_arch as H
from hyresr_arch.cli import main as cli
from hyresr_arch.tools import checkpoints, export_ncnn, files, runners, upscale
from hyresr_arch.tools.images import Image, read_image, to_array, to_tensor, write_image

torch.set_num_threads(1)




@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return perturb(H.hyresr_tiny(scale=2))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, tiny):
    """A BasicSR-style training checkpoint of `tiny`."""
    path = tmp_path_factory.mktemp("ckpt") / "net_g_100.pth"
    torch.save({"params": tiny.state_dict(), "params_ema": tiny.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    d = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    cv2.imwrite(str(d / "rgb.png"), rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    cv2.imwrite(str(d / "grey16.png"), rng.integers(0, 65536, (20, 24), dtype=np.uint16))
    rgba = rng.integers(0, 256, (20, 24, 4), dtype=np.uint8)
    cv2.imwrite(str(d / "alpha.png"), rgba)
    opaque = rgba.copy()
    opaque[:, :, 3] = 255
    cv2.imwrite(str(d / "opaque.png"), opaque)
    cv2.imwrite(str(d / "photo.jpg"), rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    cv2.imwrite(str(d / "photo.webp"), rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    (d / "broken.png").write_bytes((d / "rgb.png").read_bytes()[:50])
    return d


def _no_partials(folder) -> bool:
    return not any(".partial" in f.name for f in folder.iterdir())


# --------------------------------------------------------------------------- fuse


def test_fuse_writes_a_fused_safetensors_spandrel_loads(tmp_path, ckpt, tiny, capsys):
    out = tmp_path / "fused.safetensors"
    assert cli(["fuse", str(ckpt), str(out)]) == 0
    text = capsys.readouterr().out
    assert "hyresr_tiny" in text and "max abs diff" in text
    desc, _ = checkpoints.load_descriptor(out)
    assert desc.model.is_fused and "fused" in desc.tags
    x = torch.rand(1, 3, 20, 24)
    with torch.inference_mode():
        assert torch.allclose(desc.model(x), tiny(x), atol=1e-4)
    assert safetensors.safe_open(str(out), "pt").metadata()["fused"] == "true"
    assert _no_partials(tmp_path)

    # given again: reported as already fused, not fused twice; .pth by extension
    out2 = tmp_path / "again.pth"
    assert cli(["fuse", str(out), str(out2)]) == 0
    assert "already fused" in capsys.readouterr().out
    sd = torch.load(out2, weights_only=True)["params"]
    assert torch.equal(sd["encoder1.blocks.0.reparam.fused.weight"],
                       desc.model.state_dict()["encoder1.blocks.0.reparam.fused.weight"])


def test_fuse_refuses_to_overwrite_its_input(ckpt, capsys):
    before = ckpt.read_bytes()
    assert cli(["fuse", str(ckpt), str(ckpt)]) == 2
    assert "refusing" in capsys.readouterr().err
    assert ckpt.read_bytes() == before


# --------------------------------------------------------------------------- untrusted checkpoints


class _Payload:
    """Unpickling this creates a directory: proof that code from the file ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("command", ["fuse", "info", "upscale", "export-onnx"])
def test_unsafe_pickle_is_refused_and_its_code_never_runs(tmp_path, tiny, images, capsys, command):
    marker = tmp_path / "PAYLOAD_RAN"
    evil = tmp_path / "evil.pth"
    torch.save({"params": tiny.state_dict(), "extra": _Payload(str(marker))}, evil)
    argv = {
        "fuse": ["fuse", str(evil), str(tmp_path / "o.safetensors")],
        "info": ["info", str(evil)],
        "upscale": ["upscale", "-m", str(evil), str(images / "rgb.png"), "-o", str(tmp_path / "out"), "--quiet"],
        "export-onnx": ["export-onnx", str(evil), str(tmp_path / "o.onnx")],
    }[command]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert str(evil) in err and "refused" in err
    assert not marker.exists()
    assert not (tmp_path / "o.safetensors").exists() and not (tmp_path / "o.onnx").exists()
    # the test is meaningful: an ordinary unpickler does run the payload
    marker2 = tmp_path / "CONTROL"
    pickle.loads(pickle.dumps(_Payload(str(marker2))))
    assert marker2.is_dir()


def test_bad_checkpoints_get_one_clear_error_naming_the_file(tmp_path, ckpt, tiny):
    from spandrel.architectures.Compact import Compact

    cases = {}
    data = ckpt.read_bytes()
    (tmp_path / "truncated.pth").write_bytes(data[: len(data) // 2])
    cases["truncated.pth"] = "truncated or corrupt"
    (tmp_path / "truncated.safetensors").write_bytes(safetensors.torch.save(tiny.state_dict())[:1000])
    cases["truncated.safetensors"] = "truncated or corrupt"
    torch.save(Compact(num_feat=8, num_conv=2, upscale=2).state_dict(), tmp_path / "compact.pth")
    cases["compact.pth"] = "HyReSR"
    sd = dict(tiny.state_dict())
    sd.pop("head.conv.bias")
    torch.save(sd, tmp_path / "missing.pth")
    cases["missing.pth"] = "head.conv.bias"
    sd = dict(tiny.state_dict())
    sd["stem.bias"] = torch.zeros(5)
    torch.save(sd, tmp_path / "shape.pth")
    cases["shape.pth"] = "stem"
    (tmp_path / "empty.pth").write_bytes(b"")
    cases["empty.pth"] = "empty"
    for fname, needle in cases.items():
        with pytest.raises(checkpoints.CheckpointError) as info:
            checkpoints.load_model(tmp_path / fname)
        msg = str(info.value)
        assert str(tmp_path / fname) in msg and needle in msg, msg


# --------------------------------------------------------------------------- info


def test_info_reports_what_the_checkpoint_holds(ckpt, capsys):
    assert cli(["info", str(ckpt), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["architecture"] == "HyReSR" and info["variant"] == "hyresr_tiny"
    assert info["scale"] == 2 and info["input_channels"] == 3 and info["output_channels"] == 3
    assert info["params"] == sum(p.numel() for p in H.hyresr_tiny(scale=2).parameters())
    assert info["fused"] is False and isinstance(info["supports_half"], bool)
    assert cli(["info", str(ckpt)]) == 0
    text = capsys.readouterr().out
    for word in ("HyReSR", "hyresr_tiny", "scale", "params", "fused", "supports_half"):
        assert word in text


# --------------------------------------------------------------------------- upscale


def test_upscale_writes_good_images_reports_bad_one_and_fails(tmp_path, ckpt, images, capsys):
    out = tmp_path / "out"
    rc = cli(["upscale", "-m", str(ckpt), str(images), "-o", str(out), "--quiet"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "broken.png" in err and "upscaled 6/7" in err
    expect = {"rgb.png": ((40, 48, 3), np.uint8), "grey16.png": ((40, 48), np.uint16),
              "alpha.png": ((40, 48, 4), np.uint8), "opaque.png": ((40, 48, 4), np.uint8),
              "photo.jpg": ((40, 48, 3), np.uint8), "photo.webp": ((40, 48, 3), np.uint8)}
    for name, (shape, dtype) in expect.items():
        img = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert img is not None and img.shape == shape and img.dtype == dtype, name
    assert not (out / "broken.png").exists()
    assert _no_partials(out)
    assert (cv2.imread(str(out / "opaque.png"), cv2.IMREAD_UNCHANGED)[:, :, 3] == 255).all()


def test_upscale_output_matches_the_model(tmp_path, ckpt, tiny, images):
    out = tmp_path / "o"
    assert cli(["upscale", "-m", str(ckpt), str(images / "rgb.png"), "-o", str(out), "--quiet"]) == 0
    img = read_image(images / "rgb.png")
    with torch.inference_mode():
        ref = to_array(tiny(to_tensor(img.color)))
    got = read_image(out / "rgb.png").color
    assert np.abs(got - ref).max() <= 1 / 255 + 1e-6


def test_upscale_never_overwrites_an_input(images, ckpt, capsys):
    before = {f.name: f.read_bytes() for f in images.iterdir()}
    rc = cli(["upscale", "-m", str(ckpt), str(images / "rgb.png"), "-o", str(images), "--quiet"])
    assert rc == 2
    assert "input" in capsys.readouterr().err
    assert {f.name: f.read_bytes() for f in images.iterdir()} == before


def test_upscale_unwritable_output_folder_is_a_clear_error(tmp_path, ckpt, images, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    rc = cli(["upscale", "-m", str(ckpt), str(images / "rgb.png"), "-o", str(blocker / "sub"), "--quiet"])
    assert rc == 2
    assert str(blocker) in capsys.readouterr().err


def test_atomic_write_leaves_no_half_written_file(tmp_path):
    final = tmp_path / "x.png"
    final.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(final) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt  # an interrupted run
    assert final.read_bytes() == b"old" and _no_partials(tmp_path)


@pytest.mark.parametrize("depth,dtype", [(8, np.uint8), (16, np.uint16)])
def test_encoded_pixels_are_the_rounded_clipped_floats(tmp_path, depth, dtype):
    # block-wise quantisation (600 rows > one 256-row block, a BGR view, an alpha plane, values
    # outside [0, 1]) against the plain whole-array formula, through a real PNG round trip
    rng = np.random.default_rng(0)
    color = rng.uniform(-0.2, 1.2, (600, 7, 3)).astype(np.float32)
    alpha = rng.uniform(0, 1, (600, 7)).astype(np.float32)
    peak = 2**depth - 1
    path = tmp_path / "q.png"
    write_image(path, Image(color, alpha, depth))
    got = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    expect = np.floor(np.clip(np.dstack([color[:, :, ::-1], alpha]), 0, 1) * peak + 0.5).astype(dtype)
    assert got.dtype == dtype and np.array_equal(got, expect)


def test_tiled_result_is_a_channels_last_view_equal_to_the_model():
    x = torch.rand(1, 3, 40, 24)
    runner = runners.Runner(lambda t: torch.nn.functional.interpolate(t, scale_factor=2), 2, 3, 3, align=8)
    out = upscale.upscale_tensor(runner, x, tile=16, overlap=8)
    assert torch.equal(out, torch.nn.functional.interpolate(x, scale_factor=2))
    assert to_array(out).flags["C_CONTIGUOUS"]  # the HWC array is a view: no full-size copy


def test_tiled_matches_untiled_within_bound():
    """Bound: mean abs < 0.5/255 and max abs < 4/255 with the default overlap (32 px) and 32 px
    tiles, on a photo crop with a perturbed (non-identity) hyresr_light."""
    from skimage import data

    model = perturb(H.hyresr_light(scale=2), seed=3)
    photo = data.astronaut()[100:164, 150:230].astype(np.float32) / 255  # 64 x 80
    x = to_tensor(np.ascontiguousarray(photo))
    runner = runners.Runner(lambda t: model(t).clamp(0, 1), 2, 3, 3, align=4 * model.hyperparameters["window"])
    with torch.inference_mode():
        full = model(x).clamp(0, 1)
        tiled = upscale.upscale_tensor(runner, x, tile=32)
        no_context = upscale.upscale_tensor(runner, x, tile=32, overlap=0)
    err = (tiled - full).abs()
    assert err.mean() < 0.5 / 255 and err.max() < 4 / 255, (err.mean() * 255, err.max() * 255)
    # the bound is not vacuous: tiles without context show seams
    assert (no_context - full).abs().max() > 4 / 255


def test_upscale_with_onnx_model_and_tiles(tmp_path, tiny, images):
    from hyresr_arch.tools import export_onnx

    onnx_path = tmp_path / "tiny.onnx"
    export_onnx.export_model(tiny, onnx_path, verify_sizes=[(1, 8, 8)], log=lambda *_: None)
    out = tmp_path / "o"
    assert cli(["upscale", "-m", str(onnx_path), str(images / "rgb.png"), "-o", str(out),
                "--tile", "12", "--overlap", "8", "--quiet"]) == 0
    got = read_image(out / "rgb.png").color
    assert got.shape == (40, 48, 3)
    # a 5x3 image is below the ONNX graph's 8 px minimum: the runner pads it
    runner = runners.load_runner(str(onnx_path))
    assert runner(torch.rand(1, 3, 5, 3)).shape == (1, 3, 10, 6)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "input"


# --------------------------------------------------------------------------- release


def test_release_bundle_is_complete_and_verified(tmp_path, ckpt, capsys):
    out = tmp_path / "rel"
    assert cli(["release", str(ckpt), "--name", "2x-TestModel", "-o", str(out), "--license", "CC0-1.0"]) == 0
    names = {f.name for f in out.iterdir()}
    assert names == {"2x-TestModel.safetensors", "2x-TestModel_unfused.safetensors", "2x-TestModel_fp32.onnx",
                     "2x-TestModel_fp16.onnx", "2x-TestModel.param", "2x-TestModel.bin", "2x-TestModel.json",
                     "2x-TestModel_comparison.png"}
    card = json.loads((out / "2x-TestModel.json").read_text())
    assert card["architecture"] == "hyresr" and card["scale"] == 2 and card["name"] == "TestModel"
    assert card["inputChannels"] == 3 and card["outputChannels"] == 3 and "hyresr_tiny" in card["size"]
    assert len(card["resources"]) == 6  # the model files; the comparison is under "images"
    assert sorted(r["platform"] for r in card["resources"]) == ["ncnn", "ncnn", "onnx", "onnx", "pytorch", "pytorch"]
    assert card["hyresr"]["ncnn_max_abs_error"] <= export_ncnn.FP16_ATOL
    assert runners.load_runner(str(out / "2x-TestModel.param")).scale == 2
    for r in card["resources"]:
        f = out / r["urls"][0]
        assert r["size"] == f.stat().st_size and r["sha256"] == files.sha256_of(f)
    assert card["images"] == [{"type": "standalone", "url": "2x-TestModel_comparison.png"}]
    for fname, digest in card["hyresr"]["sha256"].items():
        assert files.sha256_of(out / fname) == digest
    assert checkpoints.load_descriptor(out / "2x-TestModel.safetensors")[0].model.is_fused
    assert not checkpoints.load_descriptor(out / "2x-TestModel_unfused.safetensors")[0].model.is_fused
    for p in ("fp32", "fp16"):
        ort.InferenceSession(str(out / f"2x-TestModel_{p}.onnx"), providers=["CPUExecutionProvider"])
    comp = cv2.imread(str(out / "2x-TestModel_comparison.png"))
    assert comp is not None and comp.shape[0] == 192 and comp.shape[1] > 3 * 192
    assert not any(f.name.startswith(".2x-TestModel") for f in tmp_path.iterdir())


def test_release_refuses_a_name_with_the_wrong_scale(tmp_path, ckpt, capsys):
    out = tmp_path / "rel"
    assert cli(["release", str(ckpt), "--name", "4x-Wrong", "-o", str(out)]) == 2
    assert "x2" in capsys.readouterr().err
    assert not out.exists()


# --------------------------------------------------------------------------- demo


def test_demo_saves_fused_weights_with_the_usual_file_mode(tmp_path):
    from hyresr_arch.demo import fuse_and_save

    path = tmp_path / "fused.safetensors"
    old = os.umask(0o022)
    try:
        _, diff = fuse_and_save(H.hyresr_tiny(scale=2).eval(), np.zeros((16, 16, 3), np.uint8), path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # not the 0o600 of a temporary or safetensors' own file
    assert checkpoints.load_descriptor(path)[0].model.is_fused and diff <= 1 and _no_partials(tmp_path)
