"""Shared fixtures: small helpers every test file uses."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(ROOT))

torch.set_num_threads(min(2, torch.get_num_threads()))


def perturb(model: torch.nn.Module, std: float = 0.02, seed: int = 0) -> torch.nn.Module:
    """Add noise to every parameter, so zero-initialised residual scales and heads are non-zero
    and equivalence tests compare real computations, not an identity map."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=g) * std)
    return model


def perturbed(model: torch.nn.Module, seed: int = 0, std: float = 0.05) -> torch.nn.Module:
    """``perturb`` with a larger default noise, in eval mode (the deployment tests' habit)."""
    return perturb(model, std=std, seed=seed).eval()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark images not found at {SHARED_DATA} (the ../shared/data folder beside the project)")
    return SHARED_DATA
