"""Model zoo shared by the benchmarks: HyReSR variants and the peers, built from spandrel.

Every peer is built with the configuration its paper / official repository calls by that name
(stated in ``PEERS[name].config`` and in docs/BENCHMARKS.md). Nothing is downloaded: all models are
randomly initialised; only architecture cost (efficiency.py) and equal-budget training from scratch
(quality.py) are measured.
"""

from __future__ import annotations

import fnmatch
import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # appended: an installed / PYTHONPATH hyresr_arch wins

DATA = REPO.parent / "shared" / "data"

HYRESR_NAMES = ("hyresr_tiny", "hyresr_light", "hyresr", "hyresr_sr", "hyresr_rest")


# --------------------------------------------------------------------------------------------------
# spandrel import that also works where torchvision / safetensors are missing (the GPU host):
# the architecture files only need torch (+ einops for some); spandrel's package __init__ imports its
# whole registry (torchvision, safetensors). On ImportError we load the arch modules through stub
# parent packages so no registry is imported.
def _arch_module(path: str) -> types.ModuleType:
    full = f"spandrel.architectures.{path}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as err:
        if err.name not in ("torchvision", "safetensors"):
            raise
    spec = importlib.util.find_spec("spandrel")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("spandrel is not installed")
    root = Path(list(spec.submodule_search_locations)[0])
    for name in [n for n in sys.modules if n == "spandrel" or n.startswith("spandrel.")]:
        del sys.modules[name]
    parts = full.split(".")
    for i in range(1, len(parts)):
        pkg_name = ".".join(parts[:i])
        pkg_dir = root.joinpath(*parts[1:i])
        if pkg_name not in sys.modules and (pkg_dir / "__init__.py").exists() and i <= 3:
            stub = types.ModuleType(pkg_name)
            stub.__path__ = [str(pkg_dir)]  # type: ignore[attr-defined]
            sys.modules[pkg_name] = stub
    return importlib.import_module(full)


# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Peer:
    build: Callable[[int], nn.Module]
    config: str
    scales: tuple[int, ...] = (2, 3, 4)
    control: bool = False  # a training control (quality.py), not an architecture of its own


def _span(s: int) -> nn.Module:
    return _arch_module("SPAN.__arch.span").SPAN(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=s)


def _safmn(s: int) -> nn.Module:
    return _arch_module("SAFMN.__arch.safmn").SAFMN(dim=36, n_blocks=8, ffn_scale=2.0, upscaling_factor=s)


def _omnisr(s: int) -> nn.Module:
    return _arch_module("OmniSR.__arch.OmniSR").OmniSR(
        num_in_ch=3, num_out_ch=3, num_feat=64, block_num=1, pe=True, window_size=8, res_num=5, up_scale=s)


def _seemore_t(s: int) -> nn.Module:
    return _arch_module("SeemoRe.__arch.seemore_arch").SeemoRe(
        scale=s, in_chans=3, num_experts=3, num_layers=6, embedding_dim=36, img_range=1.0, use_shuffle=True,
        global_kernel_size=11, recursive=2, lr_space="exp", topk=1)


def _plksr_tiny(s: int) -> nn.Module:
    return _arch_module("PLKSR.__arch.PLKSR").PLKSR(
        dim=64, n_blocks=12, upscaling_factor=s, ccm_type="DCCM", kernel_size=13, split_ratio=0.25,
        lk_type="PLK", use_ea=False)


def _realplksr(s: int) -> nn.Module:
    return _arch_module("PLKSR.__arch.RealPLKSR").RealPLKSR(
        dim=64, n_blocks=28, upscaling_factor=s, kernel_size=17, split_ratio=0.25, use_ea=True, norm_groups=4)


def _mosr(s: int) -> nn.Module:
    return _arch_module("MoSR.__arch.mosr_arch").MoSR(
        in_ch=3, out_ch=3, upscale=s, n_block=24, dim=64, upsampler="ps", kernel_size=7, expansion_ratio=1.5,
        conv_ratio=1.0)


def _swinir_light(s: int) -> nn.Module:
    return _arch_module("SwinIR.__arch.SwinIR").SwinIR(
        upscale=s, in_chans=3, img_size=64, window_size=8, img_range=1.0, depths=[6, 6, 6, 6], embed_dim=60,
        num_heads=[6, 6, 6, 6], mlp_ratio=2.0, upsampler="pixelshuffledirect", resi_connection="1conv")


def _dat_light(s: int) -> nn.Module:
    return _arch_module("DAT.__arch.DAT").DAT(
        upscale=s, in_chans=3, img_size=64, img_range=1.0, depth=[18], embed_dim=60, num_heads=[6],
        expansion_factor=2.0, resi_connection="3conv", split_size=[8, 32], upsampler="pixelshuffledirect")


def _hat_s(s: int) -> nn.Module:
    return _arch_module("HAT.__arch.HAT").HAT(
        upscale=s, in_chans=3, img_size=64, window_size=16, compress_ratio=24, squeeze_factor=24, conv_scale=0.01,
        overlap_ratio=0.5, img_range=1.0, depths=[6] * 6, embed_dim=144, num_heads=[6] * 6, mlp_ratio=2.0,
        upsampler="pixelshuffle", resi_connection="1conv")


# NAFNet "of similar size" to hyresr_rest: the official SIDD layout (enc 2-2-4-8, middle 12, dec 2-2-2-2),
# width picked from NAFNET_WIDTHS as the one whose parameter count is closest to hyresr_rest's at x1.
NAFNET_WIDTHS = (8, 12, 16, 24, 32)


def _nafnet_width(width: int) -> nn.Module:
    return _arch_module("NAFNet.__arch.NAFNet_arch").NAFNet(
        img_channel=3, width=width, middle_blk_num=12, enc_blk_nums=[2, 2, 4, 8], dec_blk_nums=[2, 2, 2, 2])


_nafnet_choice: dict[str, int] = {}


def nafnet_width() -> int:
    """Width of the NAFNet peer: the SIDD layout width closest in params to hyresr_rest (x1)."""
    if "w" not in _nafnet_choice:
        try:
            target = count_params(build_hyresr("hyresr_rest", 1))
        except Exception:  # noqa: BLE001 - arch missing: fall back to the paper's smallest width
            target = count_params(_nafnet_width(16))
        _nafnet_choice["w"] = min(NAFNET_WIDTHS, key=lambda w: abs(count_params(_nafnet_width(w)) - target))
    return _nafnet_choice["w"]


def _nafnet(s: int) -> nn.Module:
    if s != 1:
        raise ValueError("NAFNet is a x1 restoration network")
    return _nafnet_width(nafnet_width())


class BilinearHeadStart(nn.Module):
    """The head-start control (issue 19): a peer plus the bilinear upscale of its input, the global
    residual HyReSR adds, so the peer starts near bilinear as HyReSR does."""

    def __init__(self, peer: nn.Module, scale: int) -> None:
        super().__init__()
        self.peer, self.scale = peer, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = torch.nn.functional.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.peer(x) + up


def _head_start(build: Callable[[int], nn.Module]) -> Callable[[int], nn.Module]:
    return lambda s: BilinearHeadStart(build(s), s)


PEERS: dict[str, Peer] = {
    "SPAN": Peer(_span, "feature_channels=48 (the NTIRE23 ESR SPAN)"),
    "SAFMN": Peer(_safmn, "dim=36, n_blocks=8, ffn_scale=2.0 (SAFMN, ICCV23)"),
    "SPAN+bilinear": Peer(_head_start(_span), "SPAN feature_channels=48 + bilinear global residual (head-start control)",
                          control=True),
    "SAFMN+bilinear": Peer(_head_start(_safmn), "SAFMN dim=36, n_blocks=8, ffn_scale=2.0 + bilinear global residual "
                                                "(head-start control)", control=True),
    "OmniSR": Peer(_omnisr, "num_feat=64, res_num=5, block_num=1, window_size=8, pe=True (official)"),
    "SeemoRe-T": Peer(_seemore_t, "embedding_dim=36, num_layers=6, num_experts=3, topk=1, lr_space=exp, "
                                  "recursive=2, global_kernel_size=11, use_shuffle=True (SeemoRe-T)"),
    "PLKSR-tiny": Peer(_plksr_tiny, "dim=64, n_blocks=12, kernel_size=13, split_ratio=0.25, ccm_type=DCCM, "
                                    "use_ea=False (PLKSR-tiny)"),
    "RealPLKSR": Peer(_realplksr, "dim=64, n_blocks=28, kernel_size=17, split_ratio=0.25, use_ea=True, "
                                  "norm_groups=4, pixelshuffle (RealPLKSR)"),
    "MoSR": Peer(_mosr, "dim=64, n_block=24, kernel_size=7, expansion_ratio=1.5, conv_ratio=1.0, "
                        "upsampler=ps (MoSR default)"),
    "SwinIR-light": Peer(_swinir_light, "embed_dim=60, depths=4x6, heads=4x6, window=8, mlp_ratio=2, "
                                        "pixelshuffledirect (SwinIR lightweight)"),
    "DAT-light": Peer(_dat_light, "embed_dim=60, depth=[18], heads=[6], split_size=[8,32], expansion=2, "
                                  "3conv, pixelshuffledirect (DAT-light)"),
    "HAT-S": Peer(_hat_s, "embed_dim=144, depths=6x6, heads=6x6, window=16, compress_ratio=24, "
                          "squeeze_factor=24, mlp_ratio=2, overlap=0.5 (HAT-S)"),
    "NAFNet": Peer(_nafnet, "SIDD layout enc=[2,2,4,8], middle=12, dec=[2,2,2,2], width chosen closest to "
                            "hyresr_rest params from 8/12/16/24/32", scales=(1,)),
}

# the peers each HyReSR target is measured against
REFERENCE_PEER = "SAFMN"


# --------------------------------------------------------------------------------------------------
def hyresr_module():
    """The hyresr_arch package (raises ImportError with a clear message when it is not there)."""
    try:
        return importlib.import_module("hyresr_arch")
    except ImportError as err:
        raise ImportError(f"hyresr_arch is not importable ({err}); run from the repo or pip install -e .") from err


def build_hyresr(name: str, scale: int) -> nn.Module:
    mod = hyresr_module()
    builder = getattr(mod, name, None)
    if builder is None:
        raise KeyError(f"hyresr_arch has no builder {name!r}")
    return builder(scale=scale)


def fuse_model(model: nn.Module) -> nn.Module:
    """Fuse reparam convs in place (eval mode first: fusing in train mode is wrong for BN branches)."""
    model.eval()
    if hasattr(model, "fuse"):
        out = model.fuse()
    else:
        out = hyresr_module().fuse(model)
    return out if isinstance(out, nn.Module) else model


def all_model_names(scale: int) -> list[str]:
    """Default model list for a scale: HyReSR variants then peers supporting that scale."""
    return list(HYRESR_NAMES) + [n for n, p in PEERS.items() if scale in p.scales and not p.control]


def resolve_models(spec: str | None, scale: int) -> list[str]:
    """Comma-separated names / globs (``hyresr*``, ``SAFMN``) -> names. None -> all for the scale."""
    universe = all_model_names(scale)
    if not spec:
        return universe
    out: list[str] = []
    for tok in (t.strip() for t in spec.split(",")):
        if not tok:
            continue
        hits = [n for n in universe if fnmatch.fnmatch(n.lower(), tok.lower())]
        if not hits and tok in PEERS:
            hits = [tok]  # explicitly named peer at an unusual scale: let build() decide
        if not hits:
            raise SystemExit(f"unknown model {tok!r}; known: {', '.join(universe)}")
        out += [h for h in hits if h not in out]
    return out


def build(name: str, scale: int) -> nn.Module:
    if name in PEERS:
        return PEERS[name].build(scale)
    return build_hyresr(name, scale)


def config_of(name: str) -> str:
    if name in PEERS:
        cfg = PEERS[name].config
        if name == "NAFNet":
            cfg += f" -> width={nafnet_width()}"
        return cfg
    try:
        return str(hyresr_module().VARIANTS[name])
    except Exception:  # noqa: BLE001
        return "?"


# --------------------------------------------------------------------------------------------------
def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def active_params(model: nn.Module) -> int:
    """Parameters a token runs through: for every TokenMoE, the experts' share of all but one
    expert (top-1; HyReSR stacks its E equal experts into fc1 / fc2 / fc2_bias). Non-MoE models:
    equal to the total."""
    total = count_params(model)
    for module in model.modules():
        if type(module).__name__ == "TokenMoE":
            experts = sum(p.numel() for p in (module.fc1.weight, module.fc1.bias, module.fc2.weight, module.fc2_bias))
            total -= experts * (module.experts - 1) // module.experts
    return total


def moe_loads(model: nn.Module) -> list[list[float]] | None:
    if not hasattr(model, "moe_loads"):
        return None
    try:
        return [[round(float(v), 4) for v in t.flatten()] for t in model.moe_loads()]
    except Exception:  # noqa: BLE001
        return None


def machine_info(device: str) -> str:
    import platform

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = f"CPU {cpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    try:
        import os

        info += f", {os.cpu_count()} logical cores visible, loadavg {os.getloadavg()[0]:.2f}"
    except OSError:
        pass
    if device.startswith("cuda") and torch.cuda.is_available():
        info = f"GPU {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}; " + info
    return info
