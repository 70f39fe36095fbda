"""Ablations: a built HyReSR with one of the draft's components taken out, for the ablation table.

Each ablation edits a built network (the network file stays as users copy it): it swaps modules
for smaller ones that compute the network without that component, so parameters, MACs and quality
all lose exactly that component. Constructor options cover the rest of the table (``experts=1``
for "MoE -> one dense FFN of the same active width", ``dims``/``depths`` for the level count).

    model = apply(hyresr_tiny(scale=4), ["no_msg"])
"""

from __future__ import annotations

import importlib
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

import zoo


def _hy():
    """The network module itself (hyresr_arch.hyresr_arch: its blocks, not only the package's exports)."""
    return importlib.import_module(zoo.hyresr_module().__name__ + ".hyresr_arch")


class NoAttention(nn.Module):
    """Stands in for a high-path attention layer: adds nothing (``t + 0``)."""

    def forward(self, t: Tensor, b: int, geo) -> Tensor:
        return t.new_zeros(())


class OnePathBlock(nn.Module):
    """A hybrid block without the frequency split: the high path (attention, FFN, MoE) runs on the
    block's input itself, the low (NAF) path is gone, and the fusion's 1x1 takes the one band."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        dim = block.scale.shape[1]
        self.high, self.reparam, self.scale = block.high, block.reparam, block.scale
        self.mix = nn.Conv2d(dim, dim, 1)
        self.ca = block.fusion.ca

    def forward(self, x: Tensor, geos) -> Tensor:
        return x + self.scale * self.reparam(self.ca(self.mix(self.high(x, geos))))


class PlainSkip(nn.Module):
    """A U-Net skip without MSG's coarse refinement: concat with the decoder feature, 1x1."""

    def __init__(self, msg: nn.Module) -> None:
        super().__init__()
        self.mix = msg.mix

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.mix(torch.cat([x, skip], dim=1))


def _no_attention(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, _hy().HighFreqPath):
            m.attns = nn.ModuleList(NoAttention() for _ in m.attns)
            m.attn_norms = nn.ModuleList(nn.Identity() for _ in m.attn_norms)


def _one_path(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, _hy().Stage):
            m.blocks = nn.ModuleList(OnePathBlock(b) for b in m.blocks)


def _no_msg(model: nn.Module) -> None:
    for name, m in list(model.named_children()):
        if isinstance(m, _hy().MSGSkip):
            setattr(model, name, PlainSkip(m))


ABLATIONS: dict[str, tuple[str, Callable[[nn.Module], None]]] = {
    "no_attention": ("no window attention (the high path keeps its FFN and MoE)", _no_attention),
    "one_path": ("no frequency split: one path, the high path on the block input; no NAF low path", _one_path),
    "no_msg": ("plain U-Net skips (concat + 1x1) instead of MSG", _no_msg),
}


def apply(model: nn.Module, names: Sequence[str]) -> nn.Module:
    """``model`` with the named ablations applied (in place); an unknown name is an error naming the known ones."""
    for name in names:
        if name not in ABLATIONS:
            raise ValueError(f"unknown ablation {name!r}; known: {', '.join(ABLATIONS)}")
        ABLATIONS[name][1](model)
    return model
