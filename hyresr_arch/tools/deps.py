"""Optional packages of the ``hyresr`` tools, and the one-line message when one is missing.

``pip install .`` gives the network and the commands' core (torch, numpy, opencv-python,
safetensors, tqdm). Loading PyTorch checkpoints through spandrel, ONNX export and ONNX inference,
NCNN export and inference, the quick start and the release comparison need extras; :func:`require`
imports such a module or raises :class:`MissingDependency` whose message names the extra to install, e.g.
``info needs spandrel: pip install "hyresr[spandrel]"``.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

# import name -> (pip package, the pack's extra that brings it)
EXTRAS: dict[str, tuple[str, str]] = {
    "spandrel": ("spandrel", "spandrel"),
    "torchvision": ("torchvision", "spandrel"),
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "basicsr": ("basicsr", "basicsr"),
    "skimage": ("scikit-image", "basicsr"),
    "yaml": ("pyyaml", "basicsr"),
    "pnnx": ("pnnx", "ncnn"),
    "ncnn": ("ncnn", "ncnn"),
}


class MissingDependency(ImportError):
    """An optional package is not installed; the message is one line that says what to install."""


def install_hint(module: str) -> str:
    package, extra = EXTRAS.get(module.split(".")[0], (module, "all"))
    return f'pip install "hyresr[{extra}]"'


def missing_message(module: str, purpose: str, alternative: str = "") -> str:
    package = EXTRAS.get(module.split(".")[0], (module, "all"))[0]
    return (f"{purpose} needs {package}, which is not installed: {install_hint(module)}"
            + (f" ({alternative})" if alternative else ""))


def require(module: str, purpose: str, alternative: str = "") -> ModuleType:
    """Import ``module``; MissingDependency naming the extra when it (or what it imports) is absent."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        absent = getattr(err, "name", None) or module
        if absent.split(".")[0] not in EXTRAS:
            absent = module
        raise MissingDependency(missing_message(absent, purpose, alternative)) from None


def require_all(modules: list[str] | tuple[str, ...], purpose: str, alternative: str = "") -> None:
    """Check up front, before any slow work, that each module is installed (found, not imported:
    BasicSR, for one, imports only through the pack's compatibility shim)."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise MissingDependency(missing_message(module, purpose, alternative))
