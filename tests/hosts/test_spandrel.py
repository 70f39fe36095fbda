"""spandrel support: HyReSRArch detection, loading, hyperparameter read-back, host checkpoints.

Everything goes through the real spandrel (MAIN_REGISTRY, ModelLoader) with HyReSR registered.
Models are hyresr_tiny / hyresr_light (the big variants are only built, never run).
"""

from __future__ import annotations

import copy
import json

import pytest
import safetensors.torch
import torch

from conftest import perturbed as perturb
from spandrel import MAIN_REGISTRY, ImageModelDescriptor, ModelLoader, SizeRequirements

import hyresr_arch as H

torch.set_num_threads(1)


@pytest.fixture(scope="module", autouse=True)
def _registered():
    H.register_spandrel()


def hyresr_arch_support():
    support = MAIN_REGISTRY.get("HyReSR")
    assert support is not None, "register_spandrel() did not add HyReSR"
    return support.architecture


# (builder, kwargs): every variant, scales 1-4, 1/3/4 channels, DySample, noise
CONFIGS = [
    ("hyresr_tiny", dict(scale=1)),
    ("hyresr_tiny", dict(scale=2)),
    ("hyresr_tiny", dict(scale=3)),
    ("hyresr_tiny", dict(scale=4)),
    ("hyresr_tiny", dict(scale=2, in_ch=1, out_ch=1)),
    ("hyresr_tiny", dict(scale=4, in_ch=4, out_ch=4)),
    ("hyresr_tiny", dict(scale=2, in_ch=4, out_ch=3)),
    ("hyresr_tiny", dict(scale=2, upsampler="dysample")),
    ("hyresr_tiny", dict(scale=3, upsampler="dysample", noise=True)),
    ("hyresr_tiny", dict(scale=1, noise=True)),
    ("hyresr_light", dict(scale=2)),
    ("hyresr_light", dict(scale=4, upsampler="dysample")),
    ("hyresr", dict(scale=4)),
    ("hyresr_sr", dict(scale=2)),
    ("hyresr_rest", dict(scale=1)),
    ("hyresr_tiny", dict(scale=2, window=8, experts=3, kernel_size=5, dims=(16, 24, 32), depths=(1, 2, 1))),
]
IDS = [f"{b}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for b, kw in CONFIGS]


def build(name: str, kw: dict, fused: bool = False) -> H.HyReSR:
    torch.manual_seed(0)
    model = H.BUILDERS[name](**kw).eval()
    return model.fuse() if fused else model


@pytest.mark.parametrize("fused", [False, True], ids=["unfused", "fused"])
@pytest.mark.parametrize(("name", "kw"), CONFIGS, ids=IDS)
def test_load_rebuilds_same_class_and_hyperparameters(name, kw, fused):
    model = build(name, kw, fused)
    arch = hyresr_arch_support()
    sd = model.state_dict()
    assert arch.detect(sd)
    for state in (sd, safetensors.torch.load(safetensors.torch.save(sd))):
        desc = arch.load(state)
        assert type(desc.model) is type(model)
        assert desc.model.hyperparameters == model.hyperparameters
        assert desc.model.is_fused == fused
        assert desc.model.variant == model.variant
        # weights arrive intact
        for k, v in desc.model.state_dict().items():
            assert torch.equal(v, sd[k]), k


@pytest.mark.parametrize(("name", "kw"), CONFIGS, ids=IDS)
def test_main_registry_picks_hyresr_and_fills_descriptor(name, kw):
    model = build(name, kw)
    desc = MAIN_REGISTRY.load(model.state_dict())
    assert isinstance(desc, ImageModelDescriptor)
    assert desc.architecture.id == "HyReSR"
    scale = kw.get("scale", 4)
    assert desc.scale == scale
    assert desc.purpose == ("Restoration" if scale == 1 else "SR")
    assert desc.input_channels == kw.get("in_ch", 3)
    assert desc.output_channels == kw.get("out_ch", 3)
    assert name in desc.tags or model.variant == "custom"
    assert model.variant in desc.tags
    assert ("dysample" in desc.tags) == (kw.get("upsampler") == "dysample")
    assert "fused" not in desc.tags
    assert "fused" in MAIN_REGISTRY.load(model.fuse().state_dict()).tags


def test_register_spandrel_is_idempotent_and_first():
    H.register_spandrel()
    H.register_spandrel()
    ids = [a.architecture.id for a in MAIN_REGISTRY.architectures("detection")]
    assert ids.count("HyReSR") == 1
    assert ids.index("HyReSR") < ids.index("Compact")


# --------------------------------------------------------------------------- detection collisions


def builtin_state_dicts() -> dict[str, dict]:
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.ESRGAN import ESRGAN
    from spandrel.architectures.SPAN import SPAN
    from spandrel.architectures.SwinIR import SwinIR

    torch.manual_seed(0)
    return {
        "ESRGAN": ESRGAN(num_filters=8, num_blocks=1, scale=2).state_dict(),
        "Compact": Compact(num_feat=8, num_conv=2, upscale=2).state_dict(),
        "SPAN": SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2).state_dict(),
        "SwinIR": SwinIR(img_size=16, embed_dim=12, depths=[1], num_heads=[2], window_size=4, upscale=2,
                         upsampler="pixelshuffledirect").state_dict(),
    }


@pytest.mark.parametrize("builtin", ["ESRGAN", "Compact", "SPAN", "SwinIR"])
def test_hyresr_detect_rejects_builtin_state_dicts(builtin):
    sd = builtin_state_dicts()[builtin]
    assert not hyresr_arch_support().detect(sd)
    # and the registry still routes it to its own architecture
    assert MAIN_REGISTRY.load(sd).architecture.id == builtin


@pytest.mark.parametrize(("name", "kw"), [CONFIGS[1], CONFIGS[7], CONFIGS[11]], ids=[IDS[1], IDS[7], IDS[11]])
@pytest.mark.parametrize("fused", [False, True])
def test_no_builtin_architecture_detects_a_hyresr_state_dict(name, kw, fused):
    sd = build(name, kw, fused).state_dict()
    claimed = [a.architecture.id for a in MAIN_REGISTRY.architectures() if a.architecture.id != "HyReSR"
               and a.detect(sd)]
    assert claimed == []


def test_non_hyresr_state_dict_gets_clear_error():
    sd = builtin_state_dicts()["Compact"]
    with pytest.raises(H.HyReSRStateDictError, match="HyReSR"):
        H.build_from_state_dict(sd)


# --------------------------------------------------------------------------- host checkpoints


@pytest.fixture(scope="module")
def tiny_pair():
    """Two different tiny x2 models: `ema` and `raw`."""
    ema = perturb(H.hyresr_tiny(scale=2), seed=1)
    raw = perturb(H.hyresr_tiny(scale=2), seed=2)
    return ema, raw


def _probe(in_ch: int = 3) -> torch.Tensor:
    return torch.rand(1, in_ch, 20, 24, generator=torch.Generator().manual_seed(3))


def _assert_same_output(desc, model) -> None:
    x = _probe(desc.input_channels)
    with torch.inference_mode():
        expected = model.eval()(x).clamp(0, 1)
    got = desc(x)
    assert got.shape == expected.shape
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()


def test_basicsr_checkpoint_loads_params_ema(tmp_path, tiny_pair):
    ema, raw = tiny_pair
    path = tmp_path / "net_g_1000.pth"
    torch.save({"params": raw.state_dict(), "params_ema": ema.state_dict()}, path)
    desc = ModelLoader().load_from_file(path)
    assert desc.architecture.id == "HyReSR"
    _assert_same_output(desc, ema)


def test_neosr_checkpoint_loads(tmp_path, tiny_pair):
    ema, _ = tiny_pair
    path = tmp_path / "net_g_1000.pth"
    torch.save({"params": ema.state_dict()}, path)
    _assert_same_output(ModelLoader().load_from_file(path), ema)


def test_trainner_redux_safetensors_with_metadata_loads(tmp_path, tiny_pair):
    ema, _ = tiny_pair
    path = tmp_path / "net_g_ema_1000.safetensors"
    meta = {"hyperparameters": json.dumps(ema.hyperparameters, default=list)}
    safetensors.torch.save_file(ema.state_dict(), str(path), metadata=meta)
    desc = ModelLoader().load_from_file(path)
    assert desc.model.hyperparameters == ema.hyperparameters
    _assert_same_output(desc, ema)


def test_ddp_module_prefixed_checkpoint_loads(tmp_path, tiny_pair):
    ema, _ = tiny_pair
    path = tmp_path / "ddp.pth"
    torch.save({"params": {f"module.{k}": v for k, v in ema.state_dict().items()}}, path)
    _assert_same_output(ModelLoader().load_from_file(path), ema)


def test_fused_checkpoint_loads_and_matches_unfused(tmp_path, tiny_pair):
    ema, _ = tiny_pair
    fused = H.fuse(copy.deepcopy(ema))
    path = tmp_path / "fused.safetensors"
    safetensors.torch.save_file(fused.state_dict(), str(path))
    desc = ModelLoader().load_from_file(path)
    assert desc.model.is_fused and "fused" in desc.tags
    x = _probe()
    with torch.inference_mode():
        assert torch.allclose(desc(x), ema(x).clamp(0, 1), atol=1e-5)


# --------------------------------------------------------------------------- precision and size


@pytest.mark.parametrize(("upsampler", "size"), [("pixelshuffle", (20, 24)), ("dysample", (20, 24)),
                                                 ("dysample", (8, 300))])
def test_supports_half_and_bfloat16_are_true_claims(upsampler, size):
    """The descriptor claims fp16/bf16; prove it: the cast model (plain .to(dtype), no autocast, as
    chaiNNer does) runs and stays close to fp32. The wide DySample case catches sampling grids
    computed in low precision (bf16 cannot address pixels of a 1200 px row)."""
    torch.manual_seed(0)
    model = perturb(H.hyresr_tiny(scale=4 if upsampler == "dysample" else 2, upsampler=upsampler))
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        ref = model(x).clamp(0, 1)
    for dtype, flag in ((torch.bfloat16, "supports_bfloat16"), (torch.float16, "supports_half")):
        desc = MAIN_REGISTRY.load(model.state_dict())
        if not getattr(desc, flag):
            continue
        desc.to(dtype)  # raises UnsupportedDtypeError if the flag were False
        out = desc(x.to(dtype)).float()
        err = (out - ref).abs()
        assert torch.isfinite(out).all(), dtype
        # about 3x the largest measured error of the three cases: bf16 max 6.0e-3, mean 1.15e-3; fp16 max
        # 9.3e-4, mean 1.8e-4
        max_bound, mean_bound = (0.018, 0.0035) if dtype == torch.bfloat16 else (0.0028, 0.00055)
        assert err.max() < max_bound and err.mean() < mean_bound, (dtype, err.max().item(), err.mean().item())


def _check_size(desc, width: int, height: int) -> None:
    x = torch.rand(1, desc.input_channels, height, width)
    with torch.inference_mode():
        y = desc(x)
    assert y.shape == (1, desc.output_channels, height * desc.scale, width * desc.scale), (width, height)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize(("name", "kw"), [("hyresr_tiny", dict(scale=2)), ("hyresr_light", dict(scale=3)),
                                          ("hyresr_tiny", dict(scale=4, upsampler="dysample"))])
def test_size_requirements_hold_at_many_sizes(name, kw):
    """In the style of spandrel's assert_size_requirements: every size the requirement admits works
    (pairs of candidates as width x height), plus awkward sizes around window multiples."""
    desc = MAIN_REGISTRY.load(perturb(H.BUILDERS[name](**kw)).state_dict())
    req: SizeRequirements = desc.size_requirements
    candidates = [s for s in range(max(1, req.minimum), 34) if req.check(s, s)][:10]
    assert len(candidates) >= 2
    if len(candidates) % 2:
        candidates.append(candidates[-1])
    for w, h in zip(candidates[::2], candidates[1::2]):
        _check_size(desc, w, h)
        _check_size(desc, h, w)
    for w, h in [(1, 1), (2, 2), (3, 5), (7, 9), (9, 17), (31, 33)]:  # spandrel pads what req rejects
        _check_size(desc, w, h)
