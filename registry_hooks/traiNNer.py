"""traiNNer-redux (github.com/the-database/traiNNer-redux): ``python -m registry_hooks.traiNNer --root
CHECKOUT`` installs the arch file and option templates (the same as ``hyresr install --host traiNNer``).

traiNNer-redux imports every ``traiNNer/archs/*_arch.py`` when the package is imported, so the
arch file alone is the integration: it registers the variants (lower-case names) with
``traiNNer.utils.registry.ARCH_REGISTRY``; traiNNer-redux passes ``scale=`` itself. Templates go
to ``options/_templates/train/HyReSR/``; the user copies one into ``options/train/HyReSR/``.
"""

from __future__ import annotations

import sys

from hyresr_arch.tools.hosts import LAYOUTS

LAYOUT = LAYOUTS["traiNNer"]
HOST, OPTIONS_SOURCE, ARCH_DEST, OPTIONS_DEST, MARKERS = (LAYOUT.host, LAYOUT.options_source, LAYOUT.arch_dest,
                                                         LAYOUT.options_dest, LAYOUT.markers)
TEST_OPTIONS_DEST, TRAIN_OPTIONS_DEST = LAYOUT.test_options_dest, LAYOUT.train_options_dest
destination = LAYOUT.destination

if __name__ == "__main__":
    from hyresr_arch.cli import main

    sys.exit(main(["install", "--host", HOST, *sys.argv[1:]]))
