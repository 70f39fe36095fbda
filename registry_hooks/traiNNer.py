"""What `hyresr install --host traiNNer` puts into a traiNNer-redux checkout
(github.com/the-database/traiNNer-redux).

traiNNer-redux imports every ``traiNNer/archs/*_arch.py`` when the package is imported, so the
arch file alone is the integration: it registers the variants (lower-case names) with
``traiNNer.utils.registry.ARCH_REGISTRY``; traiNNer-redux passes ``scale=`` itself.
Option templates go where traiNNer-redux keeps its own: the user copies one from
``options/_templates/train/HyReSR/`` into ``options/train/HyReSR/`` before training.
"""

from __future__ import annotations

HOST = "traiNNer"
OPTIONS_SOURCE = "options/traiNNer"  # in this repository (a wheel: in the hyresr_arch package)
ARCH_DEST = "traiNNer/archs/hyresr_arch.py"  # in the traiNNer-redux checkout
OPTIONS_DEST = "options/_templates/train/HyReSR"
# test templates live beside traiNNer-redux's own test templates
TEST_OPTIONS_DEST = "options/_templates/test/HyReSR"
TRAIN_OPTIONS_DEST = "options/train/HyReSR"  # where the user copies a template to train with it
MARKERS = ("traiNNer/archs/__init__.py", "traiNNer/utils/registry.py", "train.py")


def destination(option_file: str) -> str:
    """Where one of our option templates goes (test configs to the test templates folder)."""
    folder = TEST_OPTIONS_DEST if "_test" in option_file or option_file.startswith("test") else OPTIONS_DEST
    return f"{folder}/{option_file}"
