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
    "export-ncnn": ("hyresr_arch.tools.export_ncnn", "export a checkpoint to NCNN (.param/.bin) and verify it with ncnn"),
    "upscale": ("hyresr_arch.tools.upscale", "upscale images with a .pth/.safetensors/.onnx/.param model"),
    "info": ("hyresr_arch.tools.info", "print what a checkpoint holds"),
    "release": ("hyresr_arch.tools.release", "build a community release bundle from a checkpoint"),
    "contrib": ("hyresr_arch.tools.contrib", "regenerate contrib/ (spandrel and traiNNer-redux contributions, ComfyUI node) or install it"),
}


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a program stopped by Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hyresr", description="HyReSR architecture pack tools")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_module=module)
        try:
            importlib.import_module(module).configure(sp)
        except ImportError as err:  # a subcommand whose optional dependency is missing
            sp.set_defaults(_missing=err)
    return parser


def _missing_line(command: str, err: ImportError) -> str:
    from hyresr_arch.tools.deps import MissingDependency, missing_message

    if isinstance(err, MissingDependency):
        return str(err)
    return missing_message(getattr(err, "name", None) or str(err), f"hyresr {command}")


def main(argv: list[str] | None = None) -> int:
    command = "hyresr"
    try:
        args = build_parser().parse_args(argv)
        command = f"hyresr {args.command}"
        if getattr(args, "_missing", None) is not None:
            print(f"{command}: {_missing_line(args.command, args._missing)}", file=sys.stderr)
            return 2
        return int(importlib.import_module(args._module).main(args) or 0)
    except KeyboardInterrupt:
        # files being written go to temporary names (removed on the way out), so only complete
        # outputs are left: say so in one line instead of a traceback
        atomic = command.split()[-1] in ("upscale", "fuse", "export-onnx", "export-ncnn", "release")
        print(f"\n{command}: interrupted (Ctrl-C)"
              + ("; files already written are complete, nothing half-written was left" if atomic else ""),
              file=sys.stderr)
        return EXIT_INTERRUPTED
    except ImportError as err:
        from hyresr_arch.tools.deps import MissingDependency

        if not isinstance(err, MissingDependency) and getattr(err, "name", None) is None:
            raise
        print(f"{command}: {_missing_line(command.split()[-1], err)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
