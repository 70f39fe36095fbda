"""Model files for the ``hyresr`` tools: safe reading, building the network, saving a state dict.

* ``.pth`` / ``.pt`` / ``.ckpt`` files are read with ``torch.load(weights_only=True)``; a pickle
  that asks for anything other than tensors and plain containers is refused before any of its
  code can run. ``.safetensors`` cannot hold code at all.
* A truncated or corrupt file, a checkpoint of another architecture, or a HyReSR state dict with
  missing keys or wrong shapes raises :class:`CheckpointError`, one message naming the file.
* State dicts are written atomically (see ``files.py``).
"""

from __future__ import annotations

import json
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .files import atomic_path

PTH_EXTS = (".pth", ".pt", ".ckpt", ".bin")
SAFETENSORS_EXTS = (".safetensors",)
ONNX_EXTS = (".onnx",)


class CheckpointError(ValueError):
    """A model file that cannot be used; the message names the file and the problem."""


@dataclass
class Checkpoint:
    """What a model file holds after safe reading and unwrapping."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors header metadata
    format: str = "pth"  # "pth" | "safetensors"


def model_kind(path: str | os.PathLike[str]) -> str:
    """'pth', 'safetensors' or 'onnx' from the extension; CheckpointError otherwise."""
    ext = Path(path).suffix.lower()
    if ext in PTH_EXTS:
        return "pth"
    if ext in SAFETENSORS_EXTS:
        return "safetensors"
    if ext in ONNX_EXTS:
        return "onnx"
    raise CheckpointError(
        f"{path}: unsupported model file extension {ext!r} "
        f"(expected one of {', '.join(PTH_EXTS + SAFETENSORS_EXTS + ONNX_EXTS)})"
    )


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")


def _load_pth(path: Path) -> Any:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Detected pickle protocol 4" noise
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # weights_only refuses globals it does not know *before* calling them, so nothing ran.
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
        detail = [ln for ln in lines if "Unsupported" in ln or "global" in ln.lower()]
        first = (detail or lines or [type(err).__name__])[0]
        raise CheckpointError(
            f"{path}: refused to load: the pickle references objects other than tensors "
            f"(an unsafe or non-standard checkpoint; nothing in it was executed). "
            f"Convert it to .safetensors with a trusted tool, or re-save only the state dict. "
            f"[{first}]"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as err:
        raise CheckpointError(
            f"{path}: cannot read checkpoint (truncated or corrupt file?): {type(err).__name__}: "
            f"{str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        ) from None


def _load_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        tensors: dict[str, torch.Tensor] = {}
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
        return tensors, metadata
    except Exception as err:  # safetensors raises its own SafetensorError / OSError types
        msg = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise CheckpointError(
            f"{path}: cannot read safetensors file (truncated or corrupt?): "
            f"{type(err).__name__}: {msg}"
        ) from None


def _plain_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Unwrap host containers and keep tensors only; CheckpointError when nothing usable is left."""
    from hyresr_arch import unwrap_state_dict

    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{path}: expected a state dict (a dict of tensors), found {type(obj).__name__}"
        )
    try:
        sd = unwrap_state_dict(obj)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot unwrap the state dict: {err}") from None
    if not isinstance(sd, dict):
        raise CheckpointError(f"{path}: expected a state dict, found {type(sd).__name__}")
    tensors = {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: holds no tensors, so it is not a model checkpoint")
    return tensors


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a .pth/.pt/.ckpt/.safetensors model file safely and unwrap its state dict.

    Never executes code from the file. Raises CheckpointError naming the file on any problem.
    """
    p = Path(path)
    kind = model_kind(p)
    if kind == "onnx":
        raise CheckpointError(f"{p}: is an ONNX model, not a PyTorch checkpoint")
    _check_readable(p)
    if kind == "safetensors":
        raw, metadata = _load_safetensors(p)
        return Checkpoint(p, _plain_state_dict(raw, p), metadata, "safetensors")
    return Checkpoint(p, _plain_state_dict(_load_pth(p), p), {}, "pth")


def build_model(ckpt: Checkpoint) -> torch.nn.Module:
    """A HyReSR model (eval mode, CPU, fp32) with the checkpoint's weights loaded."""
    from hyresr_arch import build_from_state_dict

    try:
        model = build_from_state_dict(ckpt.state_dict)
    except ValueError as err:  # HyReSRStateDictError is a ValueError
        raise CheckpointError(f"{ckpt.path}: {err}") from None
    except (RuntimeError, KeyError, IndexError) as err:
        raise CheckpointError(
            f"{ckpt.path}: not a usable HyReSR checkpoint: {type(err).__name__}: {err}"
        ) from None
    return model.eval()


def load_model(path: str | os.PathLike[str]) -> tuple[torch.nn.Module, Checkpoint]:
    """read_checkpoint + build_model."""
    ckpt = read_checkpoint(path)
    return build_model(ckpt), ckpt


def hyperparameters_of(model: torch.nn.Module) -> dict[str, Any]:
    hp = getattr(model, "hyperparameters", None)
    return dict(hp) if isinstance(hp, dict) else {}


def onnx_minimum_size(model: torch.nn.Module) -> int:
    """Smallest H, W an exported ONNX graph takes: the network reflect-pads to its ``pad_multiple``
    (2**levels: 8 for three levels), and the traced reflect padding needs H, W >= that multiple."""
    return int(getattr(model, "pad_multiple", 8))


def tile_grid(model: torch.nn.Module) -> int:
    """Tile starts snap to this grid (input pixels): the attention windows of the lowest level, which
    sits at 1 / (pad_multiple / 2) of the input."""
    return int(hyperparameters_of(model).get("window", 8)) * onnx_minimum_size(model) // 2


def _jsonable(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def model_summary(model: torch.nn.Module) -> dict[str, Any]:
    """Facts about a built HyReSR model, shared by info/release."""
    hp = hyperparameters_of(model)
    n_params = sum(p.numel() for p in model.parameters())
    n_buffers = sum(b.numel() for b in model.buffers())
    return {
        "architecture": "HyReSR",
        "variant": getattr(model, "variant", "custom"),
        "scale": int(hp.get("scale", getattr(model, "scale", 0))),
        "input_channels": int(hp.get("in_ch", getattr(model, "in_ch", 0))),
        "output_channels": int(hp.get("out_ch", getattr(model, "out_ch", 0))),
        "params": int(n_params),
        "buffers": int(n_buffers),
        "fused": bool(getattr(model, "is_fused", False)),
        "hyperparameters": _jsonable(hp),
    }


def save_state_dict(
    state_dict: dict[str, torch.Tensor],
    path: str | os.PathLike[str],
    metadata: dict[str, str] | None = None,
    verify: Any = None,
) -> None:
    """Write a flat state dict atomically: .safetensors (with string metadata) or .pth/.pt
    (``{"params": state_dict}``, the BasicSR/neosr layout, tensors only so weights_only and
    spandrel's restricted unpickler both read it).

    ``verify(tmp_path)`` (optional) is called on the complete temporary file before it is moved
    into place; raise from it to abort.
    """
    path = Path(path)
    kind = model_kind(path)
    sd = {k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}
    with atomic_path(path) as tmp:
        if kind == "safetensors":
            from safetensors.torch import save_file

            save_file(sd, str(tmp), metadata={str(k): str(v) for k, v in (metadata or {}).items()})
        elif kind == "pth":
            torch.save({"params": sd}, tmp)
        else:
            raise CheckpointError(f"{path}: cannot save a state dict as {path.suffix}")
        if verify is not None:
            verify(tmp)


def hyperparameter_metadata(model: torch.nn.Module) -> dict[str, str]:
    """safetensors metadata in the traiNNer-redux style (hyperparameters as JSON) plus our facts."""
    summary = model_summary(model)
    return {
        "format": "pt",
        "architecture": "HyReSR",
        "variant": str(summary["variant"]),
        "fused": "true" if summary["fused"] else "false",
        "hyperparameters": json.dumps(summary["hyperparameters"], sort_keys=True),
    }


def spandrel_loader(device: str | torch.device = "cpu"):
    """A spandrel ModelLoader with HyReSR registered."""
    import spandrel

    from hyresr_arch import register_spandrel

    register_spandrel()
    return spandrel.ModelLoader(device=device)


def load_descriptor(path: str | os.PathLike[str], device: str | torch.device = "cpu"):
    """Safely read a checkpoint (weights_only / safetensors) and hand it to spandrel.

    We do not call ``ModelLoader.load_from_file``: for ``.pt`` files it tries TorchScript first,
    which is not a data-only format. spandrel still does detection and descriptor filling.
    """
    ckpt = read_checkpoint(path)
    loader = spandrel_loader(device)
    try:
        desc = loader.load_from_state_dict(ckpt.state_dict)
    except Exception as err:
        if "hyresr_meta" in ckpt.state_dict:  # a damaged HyReSR checkpoint: name the missing/wrong key
            build_model(ckpt)
        reason = str(err) or "no known architecture matches its keys"
        raise CheckpointError(
            f"{ckpt.path}: spandrel cannot load this checkpoint: {type(err).__name__}: {reason}"
        ) from None
    if desc.architecture.id != "HyReSR":
        raise CheckpointError(
            f"{ckpt.path}: not a HyReSR checkpoint (spandrel detects a {desc.architecture.id} model)"
        )
    return desc, ckpt
