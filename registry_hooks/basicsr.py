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


from hyresr_arch.tools.hosts import prepare_basicsr as prepare  # noqa: F401  (compat fixes, basicsr, HyReSR)
from hyresr_arch.tools.hosts import run_basicsr as run


if __name__ == "__main__":
    run()
