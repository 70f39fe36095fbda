"""What `hyresr install --host neosr` puts into a neosr checkout (github.com/neosr-project/neosr).

neosr imports every ``neosr/archs/*_arch.py`` when it builds a network, so the arch file alone is
the integration: it registers the variants with ``neosr.utils.registry.ARCH_REGISTRY`` and reads
the scale from the option file (``scale = ...``) through neosr's ``net_opt()``.
"""

from __future__ import annotations

HOST = "neosr"
OPTIONS_SOURCE = "options/neosr"  # in this repository (a wheel: in the hyresr_arch package)
ARCH_DEST = "neosr/archs/hyresr_arch.py"  # in the neosr checkout
OPTIONS_DEST = "options"  # neosr keeps train_*.toml / test_*.toml flat in options/
# files whose presence says "this is a neosr checkout"
MARKERS = ("neosr/archs/arch_util.py", "neosr/utils/registry.py", "train.py")


def destination(option_file: str) -> str:
    """Where one of our option files goes (neosr keeps train and test files in one folder)."""
    return f"{OPTIONS_DEST}/{option_file}"
