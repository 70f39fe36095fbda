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

from .deps import require
from .files import atomic_path

PTH_EXTS = (".pth", ".pt", ".ckpt", ".bin")
SAFETENSORS_EXTS = (".safetensors",)
ONNX_EXTS = (".onnx",)
NCNN_EXTS = (".param",)  # NAME.param with NAME.bin next to it (``hyresr export-ncnn``)


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
    """'pth', 'safetensors', 'onnx' or 'ncnn' from the extension; CheckpointError otherwise."""
    ext = Path(path).suffix.lower()
    if ext in PTH_EXTS:
        return "pth"
    if ext in SAFETENSORS_EXTS:
        return "safetensors"
    if ext in ONNX_EXTS:
        return "onnx"
    if ext in NCNN_EXTS:
        return "ncnn"
    raise CheckpointError(
        f"{path}: unsupported model file extension {ext!r} "
        f"(expected one of {', '.join(PTH_EXTS + SAFETENSORS_EXTS + ONNX_EXTS + NCNN_EXTS)})"
    )


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: no such file")
    if not path.is_file():
        raise CheckpointError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: file is empty")


def _describe_non_checkpoint(head: bytes) -> str:
    """What the first bytes of a file that is not the checkpoint its extension says look like."""
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 32:
        return "it is a safetensors file (name it .safetensors)"
    text = head.lstrip(b"\xef\xbb\xbf")
    if text and all(32 <= b < 127 or b in b"\t\r\n" for b in text):
        if text.lstrip()[:1] == b"<":
            return "it is a text file (an HTML page saved instead of the model? download the file itself)"
        return "it is a text file"
    return "its first bytes are neither a zip archive's nor a pickle's"


def _load_pth(path: Path) -> Any:
    with open(path, "rb") as f:
        head = f.read(512)
    # torch.save writes a zip archive ("PK\x03\x04"); the legacy format is a pickle ("\x80")
    if not (head.startswith(b"PK\x03\x04") or head.startswith(b"\x80")):
        raise CheckpointError(
            f"{path}: not a PyTorch checkpoint: {_describe_non_checkpoint(head)}; "
            f"give the .pth / .safetensors file a trainer wrote"
        )
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

    with open(path, "rb") as f:
        head = f.read(512)
    if len(head) >= 9 and head[8:9] != b"{":  # an 8-byte header length, then the JSON header
        what = ("it is a PyTorch zip archive (name it .pth)" if head.startswith(b"PK\x03\x04")
                else _describe_non_checkpoint(head))
        raise CheckpointError(
            f"{path}: not a safetensors file: {what}; give the .safetensors / .pth file a trainer wrote"
        )
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
    if kind in ("onnx", "ncnn"):
        raise CheckpointError(f"{p}: is an {kind.upper()} model, not a PyTorch checkpoint")
    _check_readable(p)
    if kind == "safetensors":
        raw, metadata = _load_safetensors(p)
        return Checkpoint(p, _plain_state_dict(raw, p), metadata, "safetensors")
    return Checkpoint(p, _plain_state_dict(_load_pth(p), p), {}, "pth")


def spandrel_detects(state_dict: dict[str, torch.Tensor]) -> str | None:
    """The id of the architecture spandrel loads ``state_dict`` as (HyReSR not registered), or
    None when spandrel is not installed or knows no architecture that fits."""
    try:
        import spandrel
    except ImportError:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return spandrel.ModelLoader().load_from_state_dict(state_dict).architecture.id
    except Exception:  # noqa: BLE001  (whatever spandrel raises: it cannot tell)
        return None


def not_hyresr_error(path: str | os.PathLike[str], state_dict: dict[str, torch.Tensor],
                     detected: str | None = None) -> CheckpointError:
    """The one message every tool gives for a checkpoint of another architecture: what it is when
    spandrel can tell."""
    detected = detected or spandrel_detects(state_dict)
    if detected:
        what = f"spandrel detects a {detected} model; use it with a tool for that architecture"
    else:
        what = "no 'hyresr_meta' / 'stem.weight' keys"
    return CheckpointError(f"{path}: not a HyReSR state dict ({what})")


def is_hyresr_state_dict(state_dict: dict[str, torch.Tensor]) -> bool:
    """HyReSR writes ``hyresr_meta`` into every state dict; without it the file is something else."""
    return "hyresr_meta" in state_dict


def build_model(ckpt: Checkpoint) -> torch.nn.Module:
    """A HyReSR model (eval mode, CPU, fp32) with the checkpoint's weights loaded."""
    from hyresr_arch import build_from_state_dict

    if not is_hyresr_state_dict(ckpt.state_dict):
        raise not_hyresr_error(ckpt.path, ckpt.state_dict)
    if "stem.weight" not in ckpt.state_dict:
        raise CheckpointError(f"{ckpt.path}: damaged HyReSR state dict: the key 'stem.weight' is missing")
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
            from safetensors.torch import save

            data = canonical_safetensors(save(sd, metadata={str(k): str(v) for k, v in (metadata or {}).items()}))
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        elif kind == "pth":
            torch.save({"params": sd}, tmp)
        else:
            raise CheckpointError(f"{path}: cannot save a state dict as {path.suffix}")
        if verify is not None:
            verify(tmp)


def canonical_safetensors(data: bytes) -> bytes:
    """The same safetensors file with its JSON header in one fixed order: ``__metadata__`` first
    with its keys sorted, then the tensors in data order. safetensors writes the metadata in hash
    order, which changes from run to run, so identical weights would get a different sha256 each
    time; the tensor data is not touched."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    ordered: dict[str, Any] = {}
    meta = header.pop("__metadata__", None)
    if meta is not None:
        ordered["__metadata__"] = {k: meta[k] for k in sorted(meta)}
    for key in sorted(header, key=lambda k: (header[k]["data_offsets"][0], header[k]["data_offsets"][1], k)):
        ordered[key] = header[key]
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes with spaces
    return len(text).to_bytes(8, "little") + text + data[8 + n :]


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


def spandrel_loader(device: str | torch.device = "cpu", purpose: str = "loading a .pth / .safetensors model"):
    """A spandrel ModelLoader with HyReSR registered (MissingDependency naming the extra when
    spandrel is not installed)."""
    spandrel = require("spandrel", purpose)

    from hyresr_arch import register_spandrel

    register_spandrel()
    return spandrel.ModelLoader(device=device)


def load_descriptor(path: str | os.PathLike[str], device: str | torch.device = "cpu"):
    """Safely read a checkpoint (weights_only / safetensors) and hand it to spandrel.

    We do not call ``ModelLoader.load_from_file``: for ``.pt`` files it tries TorchScript first,
    which is not a data-only format. spandrel still does detection and descriptor filling.
    """
    loader = spandrel_loader(device)
    ckpt = read_checkpoint(path)
    if not is_hyresr_state_dict(ckpt.state_dict):
        raise not_hyresr_error(ckpt.path, ckpt.state_dict)
    try:
        desc = loader.load_from_state_dict(ckpt.state_dict)
    except Exception as err:
        build_model(ckpt)  # a damaged HyReSR checkpoint: name the missing/wrong key
        reason = str(err).strip().splitlines()[0] if str(err).strip() else "no known architecture matches its keys"
        raise CheckpointError(
            f"{ckpt.path}: spandrel cannot load this checkpoint: {type(err).__name__}: {reason}"
        ) from None
    if desc.architecture.id != "HyReSR":
        raise not_hyresr_error(ckpt.path, ckpt.state_dict, desc.architecture.id)
    return desc, ckpt
