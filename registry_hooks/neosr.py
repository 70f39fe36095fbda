"""neosr (github.com/neosr-project/neosr): ``python -m registry_hooks.neosr --root CHECKOUT`` installs
the arch file and option files into a neosr checkout (the same as ``hyresr install --host neosr``).

neosr imports every ``neosr/archs/*_arch.py`` when it builds a network, so the arch file alone is
the integration: it registers the variants with ``neosr.utils.registry.ARCH_REGISTRY`` and reads
the scale from the option file (``scale = ...``) through neosr's ``net_opt()``.
"""

from __future__ import annotations

import sys

from hyresr_arch.tools.hosts import LAYOUTS

LAYOUT = LAYOUTS["neosr"]
HOST, OPTIONS_SOURCE, ARCH_DEST, OPTIONS_DEST, MARKERS = (LAYOUT.host, LAYOUT.options_source, LAYOUT.arch_dest,
                                                         LAYOUT.options_dest, LAYOUT.markers)
destination = LAYOUT.destination

if __name__ == "__main__":
    from hyresr_arch.cli import main

    sys.exit(main(["install", "--host", HOST, *sys.argv[1:]]))
