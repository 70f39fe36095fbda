"""HyReSR architecture pack. The network lives in the single drop-in file ``hyresr_arch.py``."""

from .hyresr_arch import *  # noqa: F401,F403
from .hyresr_arch import (  # noqa: F401  (not in __all__ but part of the pack's API)
    BUILDERS,
    HyReSR,
    TokenMoE,
    ReparamLargeKernelConv,
    read_hyperparameters,
    register_basicsr,
)

__version__ = "0.1.0"
