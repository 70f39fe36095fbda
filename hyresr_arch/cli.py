"""`hyresr` command line: one entry point, one module per subcommand.

Each subcommand module exposes ``configure(parser)`` (adds its arguments) and
``main(args) -> int`` (the exit code). Modules are imported lazily so that
``hyresr install`` works without onnxruntime and ``hyresr --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("hyresr_arch.demo", "train hyresr_tiny x2 on CPU through BasicSR, fuse, upscale (the quick start)"),
    "install": ("hyresr_arch.install", "copy the arch file and option templates into a neosr / traiNNer-redux checkout"),
    "fuse": ("hyresr_arch.tools.fuse", "fuse re-parameterizable convs of a checkpoint for deployment"),
    "export-onnx": ("hyresr_arch.tools.export_onnx", "export a checkpoint to ONNX and verify it with onnxruntime"),
    "upscale": ("hyresr_arch.tools.upscale", "upscale images with a .pth/.safetensors/.onnx model"),
    "info": ("hyresr_arch.tools.info", "print what a checkpoint holds"),
    "release": ("hyresr_arch.tools.release", "build a community release bundle from a checkpoint"),
    "contrib": ("hyresr_arch.tools.contrib", "regenerate contrib/ (spandrel architecture, ComfyUI node) or install it"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hyresr", description="HyReSR architecture pack tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        try:
            importlib.import_module(module).configure(sp)
        except ModuleNotFoundError as err:  # a subcommand whose optional dependency is missing
            sp.set_defaults(_missing=str(err))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "_missing", None):
        print(f"hyresr {args.command}: unavailable ({args._missing}); "
              "install the pack with its extras: pip install -e '.[all]'", file=sys.stderr)
        return 2
    return int(importlib.import_module(args._module).main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
