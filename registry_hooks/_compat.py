"""Make the PyPI basicsr 1.4.2 (2022) importable and trainable with current torch/torchvision/numpy.

Nothing in site-packages is edited; every fix is applied to the running process only:

- ``torchvision.transforms.functional_tensor`` was removed in torchvision 0.17, but
  ``basicsr/data/degradations.py`` imports ``rgb_to_grayscale`` from it.  We register a small
  stand-in module under that name that re-exports the function from
  ``torchvision.transforms.functional``.
- ``torch.load`` defaults to ``weights_only=True`` since torch 2.6.  BasicSR's checkpoints
  (``{"params": ..., "params_ema": ...}``) load fine that way; its *resume* states also hold a
  ``collections.Counter`` (MultiStepRestartLR milestones), which we add to torch's safe globals.
- numpy 2: the 1.4.2 training/validation path (paired dataset, SRModel, PSNR/SSIM metrics,
  matlab_functions.imresize) uses no removed aliases (``np.float`` etc.); checked by grep and by
  ``tests/test_hosts.py`` which runs it end to end.

Call :func:`apply` before the first ``import basicsr``; it is idempotent.
"""

from __future__ import annotations

import collections
import sys
import types

_SHIM_NAME = "torchvision.transforms.functional_tensor"


def apply() -> None:
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
