"""The training hosts, as the pack's tools see them: BasicSR's compatibility fixes and where
``hyresr install`` puts the arch file and option templates in a neosr or traiNNer-redux checkout.

``registry_hooks/`` (the hosts' entry points) imports this; nothing in ``hyresr_arch`` imports
``registry_hooks``.
"""

from __future__ import annotations

import collections
import os
import sys
import types
from dataclasses import dataclass

# -- BasicSR 1.4.2 (PyPI, 2022) with current torch / torchvision / numpy ---------------------------
#
# Nothing in site-packages is edited; every fix applies to the running process only:
# - torchvision.transforms.functional_tensor was removed in torchvision 0.17, but
#   basicsr/data/degradations.py imports rgb_to_grayscale from it: a stand-in module re-exports it
#   from torchvision.transforms.functional.
# - torch.load defaults to weights_only=True since torch 2.6. BasicSR's checkpoints load that way; its
#   resume states also hold a collections.Counter (MultiStepRestartLR milestones), added to the safe globals.
# - numpy 2: the 1.4.2 training/validation path uses no removed aliases (tests/hosts/test_hosts.py runs it).

_SHIM_NAME = "torchvision.transforms.functional_tensor"


def apply_basicsr_compat() -> None:
    """The fixes above; call before the first ``import basicsr``. Idempotent."""
    if _SHIM_NAME not in sys.modules:
        try:
            import torchvision.transforms.functional_tensor  # noqa: F401  (old torchvision: nothing to do)
        except ImportError:
            from torchvision.transforms import functional

            shim = types.ModuleType(_SHIM_NAME)
            shim.__doc__ = "hyresr shim: basicsr 1.4.2 imports rgb_to_grayscale from here"
            shim.rgb_to_grayscale = functional.rgb_to_grayscale
            sys.modules[_SHIM_NAME] = shim

    import torch

    add_safe = getattr(torch.serialization, "add_safe_globals", None)
    if add_safe is not None:
        add_safe([collections.Counter])


def prepare_basicsr() -> None:
    """The compat fixes, then basicsr, then HyReSR registered in BasicSR's ARCH_REGISTRY (the arch
    file registers on import when basicsr came first; when it was imported earlier, explicitly)."""
    apply_basicsr_compat()
    import basicsr.utils.registry  # noqa: F401  (before the arch file, so that it can register)

    import hyresr_arch

    hyresr_arch.register_basicsr()


def run_basicsr(argv: list[str] | None = None, root_path: str | None = None) -> None:
    """BasicSR's ``train_pipeline`` (or ``test_pipeline`` with ``--test``) with HyReSR registered. BasicSR
    parses ``sys.argv`` itself, so ``argv`` (without the program name) replaces it for the call;
    experiments/, tb_logger/ and results/ go under ``root_path`` (default: the current folder)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    test = "--test" in argv
    argv = [a for a in argv if a != "--test"]
    prepare_basicsr()
    root_path = os.path.abspath(root_path or os.getcwd())
    saved = sys.argv
    sys.argv = ["registry_hooks.basicsr", *argv]
    try:
        if test:
            from basicsr.test import test_pipeline

            test_pipeline(root_path)
        else:
            from basicsr.train import train_pipeline

            train_pipeline(root_path)
    finally:
        sys.argv = saved


# -- neosr and traiNNer-redux checkouts ------------------------------------------------------------


@dataclass(frozen=True)
class HostLayout:
    """Where our files go in a host's checkout (paths relative to its root, which holds train.py)."""

    host: str
    options_source: str  # our templates, in this repository (in a wheel: inside the hyresr_arch package)
    arch_dest: str
    options_dest: str
    markers: tuple[str, ...]  # files whose presence says "this is a checkout of that host"
    test_options_dest: str | None = None  # test templates, where the host keeps them apart
    train_options_dest: str | None = None  # where the user copies a template to train with it

    def destination(self, option_file: str) -> str:
        """Where one of our option files goes."""
        test = "_test" in option_file or option_file.startswith("test")
        folder = self.test_options_dest if test and self.test_options_dest else self.options_dest
        return f"{folder}/{option_file}"


LAYOUTS = {
    # neosr imports every neosr/archs/*_arch.py when it builds a network: the arch file alone is the
    # integration (it reads the scale from the option file through neosr's net_opt()); train and test
    # options live flat in options/
    "neosr": HostLayout("neosr", "options/neosr", "neosr/archs/hyresr_arch.py", "options",
                        ("neosr/archs/arch_util.py", "neosr/utils/registry.py", "train.py")),
    # traiNNer-redux imports every traiNNer/archs/*_arch.py with the package and passes scale= itself;
    # templates go beside its own, the user copies one into options/train/HyReSR/
    "traiNNer": HostLayout("traiNNer", "options/traiNNer", "traiNNer/archs/hyresr_arch.py",
                           "options/_templates/train/HyReSR",
                           ("traiNNer/archs/__init__.py", "traiNNer/utils/registry.py", "train.py"),
                           test_options_dest="options/_templates/test/HyReSR",
                           train_options_dest="options/train/HyReSR"),
}
