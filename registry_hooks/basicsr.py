"""Train or test HyReSR with BasicSR installed from PyPI (the BasicSR-examples pattern).

    python -m registry_hooks.basicsr -opt options/basicsr/train_hyresr_light_x4.yml
    python -m registry_hooks.basicsr --test -opt options/basicsr/test_hyresr_x4.yml

Every other argument (``--auto_resume``, ``--debug``, ``--force_yml k:k=v``, ``--launcher``) is
BasicSR's own. ``experiments/``, ``tb_logger/`` and ``results/`` go to the current directory,
as with BasicSR's ``basicsr/train.py`` run from a BasicSR checkout.

Order matters: the compat shim must run before ``basicsr`` is imported, and ``hyresr_arch``
must be imported (which registers ``HyReSR``, ``hyresr_tiny``, ... in basicsr's ARCH_REGISTRY)
before BasicSR builds ``network_g``.
"""

from __future__ import annotations

import os
import sys

from registry_hooks import _compat


def prepare() -> None:
    """Apply the basicsr 1.4.2 compat fixes, import basicsr, register the HyReSR builders."""
    _compat.apply()
    import basicsr.utils.registry  # noqa: F401  (import before the arch file so it can register)
    import hyresr_arch

    # The arch file registers with BasicSR on import when basicsr was imported first; when
    # hyresr_arch was imported earlier (e.g. by `hyresr demo`), register explicitly. Idempotent.
    hyresr_arch.register_basicsr()


def run(argv: list[str] | None = None, root_path: str | None = None) -> None:
    """Run BasicSR's ``train_pipeline`` (or ``test_pipeline`` with ``--test``).

    BasicSR parses ``sys.argv`` itself, so ``argv`` (without the program name) replaces it for the
    duration of the call.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    test = "--test" in argv
    argv = [a for a in argv if a != "--test"]
    prepare()
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


if __name__ == "__main__":
    run()
