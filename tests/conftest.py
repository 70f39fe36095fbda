"""Shared fixtures: small helpers every test file uses."""

from __future__ import annotations

import logging

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

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


def _per_expert(moe: torch.nn.Module, name: str, grad: torch.Tensor) -> torch.Tensor:
    """Each expert's share of a stacked expert weight's gradient, one row per expert."""
    if name == "fc2.weight":  # C, E*H: expert e owns columns [He, H(e+1))
        return grad.view(grad.shape[0], moe.experts, -1).transpose(0, 1).reshape(moe.experts, -1)
    return grad.reshape(moe.experts, -1)  # fc1 rows [2He, 2H(e+1)), fc2_bias row e


def assert_nonzero_gradients(model: torch.nn.Module) -> None:
    """After a training forward + backward: every trainable parameter has a finite gradient that is
    not all zero. The stated exception is the MoE: an expert that got no tokens in that forward
    (``TokenMoE.counts``) has exactly zero gradients in its slices of the stacked expert weights
    (the one-hot gate), and every expert that got tokens has nonzero ones; with a single expert the
    gate is a constant 1, so that router gets a zero gradient."""
    done: set[int] = set()
    for prefix, moe in model.named_modules():
        if type(moe).__name__ != "TokenMoE":
            continue
        chosen = moe.counts > 0
        for name in ("fc1.weight", "fc1.bias", "fc2.weight", "fc2_bias"):
            p = moe.get_parameter(name)
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{prefix}.{name}"
            nonzero = _per_expert(moe, name, p.grad).abs().sum(dim=1) > 0
            assert torch.equal(nonzero, chosen), f"{prefix}.{name}: gradient {nonzero.tolist()}, tokens {chosen.tolist()}"
            done.add(id(p))
        if moe.experts == 1:
            done.update(id(p) for p in moe.router.parameters() if p.grad is not None)
    for name, p in model.named_parameters():
        if not p.requires_grad:  # the balancing state: updated by the forward, never by gradients
            assert name.endswith("route_bias") or name == "balance_steps", f"{name} is frozen"
        elif id(p) not in done:
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"{name}: no or non-finite gradient"
            assert p.grad.abs().sum() > 0, f"{name}: all-zero gradient"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"benchmark images not found at {SHARED_DATA} (the ../shared/data folder beside the project)")
    return SHARED_DATA


class _Lines(logging.Handler):
    """Collects the messages a logger lets through (after its filters ran)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def capture_log():
    """capture_log(name) -> the list of messages the logger ``name`` lets through."""
    attached: list[tuple[logging.Logger, _Lines, int]] = []

    def attach(name: str) -> list[str]:
        logger = logging.getLogger(name)
        handler = _Lines()
        attached.append((logger, handler, logger.level))
        logger.addHandler(handler)
        logger.setLevel(logging.DEBUG)
        return handler.lines

    yield attach
    for logger, handler, level in attached:
        logger.removeHandler(handler)
        logger.setLevel(level)


@pytest.fixture(scope="session")
def basicsr_models():
    """BasicSR's (BaseModel, SRModel), imported through the pack's torchvision shim."""
    try:
        from registry_hooks import basicsr as hook

        hook.prepare()
        from basicsr.models import base_model, sr_model
    except Exception as err:  # noqa: BLE001
        pytest.skip(f"basicsr not importable: {err}")
    return base_model.BaseModel, sr_model.SRModel
