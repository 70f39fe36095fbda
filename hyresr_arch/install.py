"""`hyresr install`: put HyReSR into a neosr or traiNNer-redux checkout (or take it out again).

    hyresr install --host neosr --root ~/neosr
    hyresr install --host traiNNer --root ~/traiNNer-redux
    hyresr install --host traiNNer --root ~/traiNNer-redux --uninstall

Copies ``hyresr_arch.py`` into the host's ``archs/`` folder (the host registers it on import) and
our option templates into the host's options folder. A different file already at a destination is
never overwritten without ``--force``; ``--uninstall`` removes only files identical to ours
(``--force``: remove them anyway). What goes where is in ``hyresr_arch/tools/hosts.py``.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
from pathlib import Path

from hyresr_arch.tools.hosts import LAYOUTS, HostLayout

HOSTS = tuple(LAYOUTS)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", required=True, choices=HOSTS, help="which training framework")
    parser.add_argument("--root", required=True, help="the host's checkout (the folder holding train.py)")
    parser.add_argument("--force", action="store_true",
                        help="overwrite (or, with --uninstall, remove) files that differ from ours")
    parser.add_argument("--uninstall", action="store_true", help="remove what install put there")


def _layout(host: str) -> HostLayout:
    return LAYOUTS[host]


def _template_folder(host: str) -> Path:
    """The folder of our option templates for `host`: ``options/<host>/`` in the repository (a checkout
    or an editable install); a built wheel carries the same folder inside the package (setup.py)."""
    source = _layout(host).options_source
    package = Path(__file__).resolve().parent
    for folder in (package / source, package.parent / source):
        if folder.is_dir():
            return folder
    raise FileNotFoundError(f"option templates not found at {package / source} (a broken install of the pack?)")


def plan(host: str) -> list[tuple[Path, str]]:
    """(source file in this pack, destination relative to the host root) for everything we install."""
    layout = _layout(host)
    arch = Path(__file__).resolve().parent / "hyresr_arch.py"
    items = [(arch, layout.arch_dest)]
    for src in sorted(_template_folder(host).iterdir()):
        if src.is_file() and src.suffix in (".toml", ".yml", ".yaml"):
            items.append((src, layout.destination(src.name)))
    return items


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def install(host: str, root: Path, force: bool = False, out=print, err=_stderr) -> int:
    items = plan(host)
    conflicts = [d for s, d in items if (root / d).exists() and not filecmp.cmp(s, root / d, shallow=False)]
    if conflicts and not force:
        err(f"hyresr install: refusing to overwrite {len(conflicts)} file(s) that differ from this pack's "
            f"({', '.join(str(root / d) for d in conflicts)}); give --force to overwrite them")
        return 1
    for src, dest in items:
        target = root / dest
        if target.exists() and filecmp.cmp(src, target, shallow=False):
            out(f"unchanged   {target}")
            continue
        action = "overwrote" if target.exists() else "installed"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        out(f"{action:<11} {target}")
    layout = _layout(host)
    if host == "neosr":
        out("next: python train.py -opt options/train_hyresr_light_x4.toml  (edit the dataset paths first)")
    else:
        out(f"next: copy a template from {root / layout.options_dest} into {layout.train_options_dest}/, edit its "
            f"dataset paths, then python train.py --auto_resume -opt {layout.train_options_dest}/<file>.yml")
    return 0


def uninstall(host: str, root: Path, force: bool = False, out=print) -> int:
    kept, items = 0, plan(host)
    for src, dest in items:
        target = root / dest
        if not target.exists():
            continue
        if not force and not filecmp.cmp(src, target, shallow=False):
            out(f"kept        {target}  (differs from this pack's file; --force removes it)")
            kept += 1
            continue
        target.unlink()
        out(f"removed     {target}")
    # folders that only we create (the HyReSR template folders), if now empty
    for folder in {Path(dest).parent for _, dest in items}:
        path = root / folder
        if folder.name == "HyReSR" and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
            out(f"removed     {path}/")
    return 1 if kept else 0


def main(args: argparse.Namespace) -> int:
    root = Path(args.root).expanduser().resolve()
    layout = _layout(args.host)
    if not root.is_dir() or not all((root / m).is_file() for m in layout.markers):
        expected = ", ".join(layout.markers)
        print(f"hyresr install: {root} does not look like a {args.host} checkout (expected {expected})",
              file=sys.stderr)
        return 2
    if args.uninstall:
        return uninstall(args.host, root, args.force)
    return install(args.host, root, args.force)


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="hyresr install")
    configure(p)
    sys.exit(main(p.parse_args()))
