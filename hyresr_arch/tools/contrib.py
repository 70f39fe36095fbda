"""``hyresr contrib``: the spandrel and traiNNer-redux contributions and the ComfyUI node in
``contrib/``, generated from the arch file so that none can drift from it.

    hyresr contrib                        # regenerate contrib/spandrel, contrib/traiNNer-redux, contrib/comfyui
    hyresr contrib --check                # exit 1 (and name the files) if they are stale
    hyresr contrib --spandrel ~/spandrel  # add HyReSR to a spandrel checkout (files, registry, README)
    hyresr contrib --trainner ~/traiNNer-redux  # copy the traiNNer-redux files into a checkout
    hyresr contrib --comfyui ~/ComfyUI    # copy the node into ComfyUI/custom_nodes/ComfyUI-HyReSR

Generated (change the arch file or this generator, not them):

* ``contrib/spandrel/.../HyReSR/__arch/HyReSR.py``: the network part of ``hyresr_arch.py`` (up to
  the "Plumbing" section), with spandrel's ``store_hyperparameters`` instead of the file's own
  record and unused imports dropped;
* ``contrib/spandrel/tests/test_HyReSR.py``: spandrel's test conventions; the configurations are
  written out from ``VARIANTS`` and ``LOAD_CONFIGS`` below, the model tests from ``MODEL_FILES``;
* ``contrib/spandrel/tests/__snapshots__/test_HyReSR.ambr``: what the contributed
  ``HyReSRArch`` reports for each model file (syrupy's format);
* ``contrib/traiNNer-redux/traiNNer/archs/hyresr_arch.py``: the network part in traiNNer-redux's
  style (``trainner_arch_source``), and its option templates from ``options/traiNNer/``;
* ``contrib/comfyui/hyresr_arch.py``: a verbatim copy of the arch file.

The Python files for spandrel and traiNNer-redux go through ruff 0.5.0 (spandrel's pin, the Python
package, never a ruff on PATH) with each project's settings, so they are lint- and format-clean there.

Written by hand: the ``HyReSRArch`` loader (``.../HyReSR/__init__.py``: it reads the hyperparameters
from tensor shapes and the ``hyresr_meta`` entry, the spandrel way), its LICENSE, the READMEs,
``contrib/comfyui/__init__.py``. The model files in ``contrib/spandrel/tests/models`` are trained by
``python contrib/spandrel/make_test_models.py`` (which then regenerates contrib/).

The images spandrel's inference tests compare against are not kept here: they depend on
spandrel's own input images, so ``--spandrel`` computes them in the checkout with this pack's
model (the reference), and the spandrel test then checks the contributed loader against it.
"""

from __future__ import annotations

import argparse
import ast
import functools
import importlib.util
import inspect
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
CONTRIB = ROOT / "contrib"
SPANDREL = CONTRIB / "spandrel"
COMFYUI = CONTRIB / "comfyui"
ARCH_ID = "HyReSR"
ARCH_DIR = Path("libs/spandrel/spandrel/architectures") / ARCH_ID  # inside a spandrel checkout
MODELS_DIR = Path("tests/models")
COMFYUI_NODE_NAME = "ComfyUI-HyReSR"

# Where the project and the spandrel test model files are published: the repository URL is
# setup.cfg's `url` (set it to the real repository before submitting, then run `hyresr contrib`);
# spandrel's tests download the model files from MODEL_URL + <file name> (release assets of the
# release tagged MODEL_RELEASE_TAG). A checkout prepared with --spandrel has them in tests/models.
MODEL_RELEASE_TAG = "spandrel-test-models"


def project_url() -> str:
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg", encoding="utf-8")
    url = cfg.get("metadata", "url", fallback="").strip().rstrip("/")
    if not url.startswith("https://"):
        raise ContribError("setup.cfg has no [metadata] url = https://... (the repository the model files are "
                           "published in)")
    return url


def model_url() -> str:
    """The folder URL the spandrel tests download the model files from."""
    return f"{project_url()}/releases/download/{MODEL_RELEASE_TAG}/"


# The model files the spandrel tests load (written by contrib/spandrel/make_test_models.py).
MODEL_FILES = (
    "2x_HyReSR_tiny_test.safetensors",
    "4x_HyReSR_tiny_test.safetensors",
    "4x_HyReSR_light_dysample_fused_test.safetensors",
)
TEST_IMAGES = ("SR_16", "SR_32", "SR_64")  # spandrel's TestImage members
TEST_IMAGE_FILES = {"SR_16": "16x16.png", "SR_32": "32x32.png", "SR_64": "64x64.png"}

# spandrel's test_load: (variant, overrides) -> HyReSR(**VARIANTS[variant], **overrides), written
# out with the arguments that differ from HyReSR's defaults. Every variant, every scale, 1/3/4
# channels, both heads, noise, and one configuration that sets every other argument.
LOAD_CONFIGS: tuple[tuple[str, dict], ...] = (
    ("hyresr", {}),
    ("hyresr_tiny", {}),
    ("hyresr_light", {}),
    ("hyresr_sr", {"scale": 2}),
    ("hyresr_rest", {"scale": 1}),
    ("hyresr_tiny", {"scale": 1}),
    ("hyresr_tiny", {"scale": 2}),
    ("hyresr_tiny", {"scale": 3}),
    ("hyresr_tiny", {"scale": 8}),
    ("hyresr_tiny", {"scale": 2, "in_ch": 1, "out_ch": 1}),
    ("hyresr_tiny", {"scale": 2, "in_ch": 4, "out_ch": 4}),
    ("hyresr_tiny", {"in_ch": 4, "out_ch": 3}),
    ("hyresr_tiny", {"scale": 2, "upsampler": "dysample"}),
    ("hyresr_tiny", {"scale": 3, "upsampler": "dysample", "noise": True}),
    ("hyresr_tiny", {"scale": 1, "noise": True}),
    ("hyresr_light", {"upsampler": "dysample"}),
    ("hyresr_tiny", {"dims": (48,), "depths": (2,)}),  # one level: no U-Net, no skips
    ("hyresr_tiny", {"scale": 2, "dims": (16, 24, 32), "depths": (1, 2, 1), "window": 8, "overlap": 0.5,
                     "experts": 3, "expert_ratio": 0.75, "ffn_ratio": 1.25, "low_depth": 2, "high_depth": 2,
                     "global_mix": True, "kernel_size": 5}),
)
# the same, fused (model.fuse() returns the model)
FUSED_CONFIGS: tuple[tuple[str, dict], ...] = (LOAD_CONFIGS[6], LOAD_CONFIGS[15], LOAD_CONFIGS[-1])
SMALL_VARIANTS = ("hyresr_tiny", "hyresr_light")  # the ones this pack's own tests also run

# The arch file's sections from this one on are not part of the network (the hyperparameter record,
# state-dict reading, host registration, spandrel support); the spandrel copy keeps everything above it.
NETWORK_ENDS_AT = ("Plumbing", "Reading a state dict", "Host registration", "spandrel support")
BANNER = re.compile(r"^# -{20,}\n# (?P<title>[^\n]+)\n# -{20,}\n", re.M)


class ContribError(RuntimeError):
    """Something the generator cannot do; the message says what to change."""


# --------------------------------------------------------------------------------------------
# The network
# --------------------------------------------------------------------------------------------


def arch_module() -> ModuleType:
    from hyresr_arch import hyresr_arch

    return hyresr_arch


def arch_source() -> str:
    path = inspect.getsourcefile(arch_module())
    assert path is not None
    return Path(path).read_text(encoding="utf-8")


def spandrel_arch_source(source: str) -> str:
    """The network part of the arch file, as spandrel keeps architecture code in ``__arch/``."""
    code = _network_part(source)
    code = _use_spandrel_store_hyperparameters(code)
    code = _rewrite_module_docstring(code)
    code = _drop_unused_imports(code)
    code = _filter_all(code)
    tree = ast.parse(code)
    calls = [n for n in tree.body if isinstance(n, ast.Expr) and not isinstance(n.value, ast.Constant)]
    if calls:
        raise ContribError(f"the network part of hyresr_arch.py runs code at import (line {calls[0].lineno}); "
                           "move it below the 'Plumbing' section banner")
    if not any(isinstance(n, ast.ClassDef) and n.name == ARCH_ID for n in tree.body):
        raise ContribError(f"the network part of hyresr_arch.py does not define class {ARCH_ID}")
    header = ("# HyReSR network, from hyresr_arch.py of the HyReSR project (Apache-2.0, see LICENSE):\n"
              f"# {project_url()}\n"
              "# The network part of that file (its state-dict reading and host registration are left out).\n")
    return header + code


def _lines(code: str, node: ast.AST) -> tuple[int, int]:
    first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
    return first - 1, node.end_lineno  # 0-based start, exclusive end


def _splice(code: str, start: int, end: int, new: list[str]) -> str:
    lines = code.splitlines(keepends=True)
    return "".join(lines[:start] + new + lines[end:])


def _use_spandrel_store_hyperparameters(code: str) -> str:
    """The pack applies its own hyperparameter decorator in its plumbing section (cut here);
    spandrel's copy decorates the class with spandrel's ``store_hyperparameters`` instead."""
    code, n = re.subn(rf"^class {ARCH_ID}\(", f"@store_hyperparameters()\nclass {ARCH_ID}(", code, count=1, flags=re.M)
    if n != 1:
        raise ContribError(f"the network part of hyresr_arch.py does not define class {ARCH_ID}")
    last_import = max(n.end_lineno for n in ast.parse(code).body if isinstance(n, (ast.Import, ast.ImportFrom)))
    # spandrel is first-party in spandrel's repository: its own import block, after the others
    return _splice(code, last_import, last_import, ["\n", "from spandrel.util import store_hyperparameters\n"])


def _rewrite_module_docstring(code: str) -> str:
    """Drop the docstring paragraphs about copying the file into hosts (wrong in spandrel)."""
    tree = ast.parse(code)
    if ast.get_docstring(tree) is None:
        return code
    raw = ast.get_source_segment(code, tree.body[0])
    assert raw is not None
    paragraphs = [p for p in raw.split("\n\n") if not re.search(r"neosr|traiNNer|register_spandrel", p)]
    start, end = _lines(code, tree.body[0])
    return _splice(code, start, end, ["\n\n".join(paragraphs) + "\n"])


def _drop_unused_imports(code: str) -> str:
    tree = ast.parse(code)
    used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    used |= {n.value.id for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
    for node in reversed([n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]):
        if isinstance(node, ast.ImportFrom) and node.module == "__future__":
            continue
        keep = [a for a in node.names if (a.asname or a.name).split(".")[0] in used]
        if len(keep) == len(node.names):
            continue
        start, end = _lines(code, node)
        if not keep:
            code = _splice(code, start, end, [])
        else:
            names = ", ".join(a.name + (f" as {a.asname}" if a.asname else "") for a in keep)
            stmt = f"from {node.module} import {names}\n" if isinstance(node, ast.ImportFrom) else f"import {names}\n"
            code = _splice(code, start, end, [stmt])
    return code


def _filter_all(code: str) -> str:
    """``__all__`` without the names of the sections that were cut."""
    tree = ast.parse(code)
    defined = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    defined |= {t.id for n in tree.body if isinstance(n, (ast.Assign, ast.AnnAssign))
                for t in (n.targets if isinstance(n, ast.Assign) else [n.target]) if isinstance(t, ast.Name)}
    node = next((n for n in tree.body if isinstance(n, ast.Assign)
                 and any(isinstance(t, ast.Name) and t.id == "__all__" for t in n.targets)), None)
    if node is None:
        return code
    names = [e.value for e in node.value.elts if isinstance(e, ast.Constant) and e.value in defined]
    start, end = _lines(code, node)
    return _splice(code, start, end, ["__all__ = [\n"] + [f'    "{n}",\n' for n in names] + ["]\n"])


# --------------------------------------------------------------------------------------------
# traiNNer-redux's copy: traiNNer/archs/hyresr_arch.py
# --------------------------------------------------------------------------------------------

# The module-level names of the network part that only serve the hyperparameter record (traiNNer-redux
# keeps none): dropped with the method that uses them.
TRAINNER_DROPPED = ("_DEFAULTS", "_ARCH_KEYS", "VARIANTS", "_arch_numbers", "BUILDERS")


def trainner_arch_source(source: str) -> str:
    """The network part of the arch file in traiNNer-redux's style: each variant function registered with
    ``@ARCH_REGISTRY.register()``, nothing imported but torch and the registry, no code at import, and MoE
    balancing without a collective (see ``_local_balancing``)."""
    code = _network_part(source)
    code = _rewrite_module_docstring(code)
    code = _drop_method(code, ARCH_ID, "variant")
    code = _drop_top_level(code, TRAINNER_DROPPED)
    code = _local_balancing(code)
    builders = list(arch_module().BUILDERS)
    code = _without_upscale(code, len(builders))
    for name in builders:
        code, n = re.subn(rf"^def {name}\(", f"@ARCH_REGISTRY.register()\ndef {name}(", code, count=1, flags=re.M)
        if n != 1:
            raise ContribError(f"the network part of hyresr_arch.py has no variant function {name}()")
    last_import = max(n.end_lineno for n in ast.parse(code).body if isinstance(n, (ast.Import, ast.ImportFrom)))
    code = _splice(code, last_import, last_import, ["\n", "from traiNNer.utils.registry import ARCH_REGISTRY\n"])
    code = _drop_unused_imports(code)
    code = _filter_all(code)
    _no_code_at_import(code)
    header = ("# HyReSR, from hyresr_arch.py of the HyReSR project (Apache-2.0):\n"
              f"# {project_url()}\n"
              "# The network part of that file, with its variants registered here.\n")
    return header + code


def _without_upscale(code: str, builders: int) -> str:
    """The variant functions without ``upscale=`` (BasicSR's name for ``scale``; traiNNer-redux passes
    ``scale`` and lists every argument in its option docs)."""
    code, n = re.subn(r"upscale: int \| None = None,\s*", "", code)
    if n != builders:
        raise ContribError(f"expected `upscale: int | None = None,` in each of the {builders} variant functions of "
                           f"hyresr_arch.py, found {n}: update _without_upscale in hyresr_arch/tools/contrib.py")
    code = _replace_once(code, "def _build(scale: int, upscale: int | None, **options)",
                         "def _build(scale: int, upscale: int | None = None, **options)", "_build")
    return _replace_once(code, "value. ``upscale`` is BasicSR's name for # ``scale`` (traiNNer-redux always passes "
                         "``scale``).", "value.", "the variants' comment")


def _network_part(source: str) -> str:
    cut = next((m.start() for m in BANNER.finditer(source)
                if m.group("title").startswith(NETWORK_ENDS_AT)), None)
    if cut is None:
        raise ContribError(f"hyresr_arch.py has no section banner titled {' / '.join(NETWORK_ENDS_AT)}: "
                           "cannot tell where the network ends")
    return source[:cut].rstrip() + "\n"


def _no_code_at_import(code: str) -> None:
    tree = ast.parse(code)
    calls = [n for n in tree.body if isinstance(n, ast.Expr) and not isinstance(n.value, ast.Constant)]
    if calls:
        raise ContribError(f"the network part of hyresr_arch.py runs code at import (line {calls[0].lineno}); "
                           "move it below the 'Plumbing' section banner")
    if not any(isinstance(n, ast.ClassDef) and n.name == ARCH_ID for n in tree.body):
        raise ContribError(f"the network part of hyresr_arch.py does not define class {ARCH_ID}")


def _with_comments_above(code: str, start: int) -> int:
    """``start`` moved up over the comment lines directly above it."""
    lines = code.splitlines()
    while start > 0 and lines[start - 1].lstrip().startswith("#"):
        start -= 1
    return start


def _drop_top_level(code: str, names: tuple[str, ...]) -> str:
    for name in names:
        tree = ast.parse(code)
        node = next((n for n in tree.body if (isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name)
                     or (isinstance(n, (ast.Assign, ast.AnnAssign)) and any(
                         isinstance(t, ast.Name) and t.id == name
                         for t in (n.targets if isinstance(n, ast.Assign) else [n.target])))), None)
        if node is None:
            raise ContribError(f"the network part of hyresr_arch.py no longer defines {name}: update "
                               "TRAINNER_DROPPED in hyresr_arch/tools/contrib.py")
        start, end = _lines(code, node)
        code = _splice(code, _with_comments_above(code, start), end, [])
    code = re.sub(r"\n{4,}", "\n\n\n", code)
    return code


def _drop_method(code: str, cls: str, name: str) -> str:
    tree = ast.parse(code)
    klass = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    node = next((n for n in klass.body if isinstance(n, ast.FunctionDef) and n.name == name), None)
    if node is None:
        raise ContribError(f"{cls}.{name} is gone from hyresr_arch.py: update hyresr_arch/tools/contrib.py")
    start, end = _lines(code, node)
    lines = code.splitlines(keepends=True)
    if end < len(lines) and not lines[end].strip():
        end += 1  # the blank line after it
    return _splice(code, start, end, [])


def _replace_once(code: str, pattern: str, new: str, what: str) -> str:
    """``pattern`` (whitespace in it matches any whitespace) replaced once; a ContribError names ``what``."""
    regex = r"\s+".join(re.escape(w) for w in pattern.split())
    code, n = re.subn(regex, lambda _: new, code, count=1)
    if n != 1:
        raise ContribError(f"hyresr_arch.py changed where traiNNer-redux's copy differs ({what}): update "
                           "_local_balancing in hyresr_arch/tools/contrib.py")
    return code


def _local_balancing(code: str) -> str:
    """traiNNer-redux wraps the network in DistributedDataParallel with its default
    ``broadcast_buffers=True``: DDP copies rank 0's buffers to every rank before each forward. With
    ``route_bias`` a persistent buffer (same state-dict key, so checkpoints are interchangeable), each rank
    applies its own token counts after its forward and DDP's broadcast makes every rank route with rank 0's
    biases in the next one: no collective in the network's forward. (Balancing then follows rank 0's share of
    the batch; the pack's own file all-reduces the counts instead.) A buffer also spares traiNNer-redux's
    "will not be optimized" log line that a frozen parameter gets, and its EMA copies buffers."""
    code = _replace_once(code, "self.route_bias = nn.Parameter(torch.zeros(experts), requires_grad=False)",
                         'self.register_buffer("route_bias", torch.zeros(experts))', "route_bias")
    code = _replace_once(code, "if torch.distributed.is_available() and torch.distributed.is_initialized(): "
                         "torch.distributed.all_reduce(pending)", "", "the all-reduce")
    code = re.sub(r"\n[ \t]*\n(?=[ \t]*# sign\(mean - count\))", "\n", code)  # the emptied line
    code = _replace_once(code, "the forward equals updating each layer right after it routed. Under DDP the counts of "
                         "all layers are summed over ranks in one all-reduce, so every rank makes the same update.",
                         "the forward equals updating each layer right after it routed. Under DDP each rank applies\n"
                         "        its own counts, and DDP's buffer broadcast gives every rank rank 0's biases before the\n"
                         "        next forward: no collective here.", "_balance_experts docstring")
    code = _replace_once(code, "the network applies them at the end of its forward (loss-free balancing, "
                         "``HyReSR._balance_experts``), with one all-reduce for all layers under DDP. ``route_bias`` "
                         "is a frozen ``nn.Parameter`` so that every host's EMA (BasicSR's averages parameters only) "
                         "averages it and every checkpoint saves it.",
                         "the network applies them at the end of its forward (loss-free balancing,\n"
                         "      ``HyReSR._balance_experts``). ``route_bias`` is a persistent buffer: every checkpoint\n"
                         "      saves it, and DDP's buffer broadcast keeps it equal on every rank.", "TokenMoE docstring")
    return code


TRAINNER = CONTRIB / "traiNNer-redux"
TRAINNER_ARCH = Path("traiNNer/archs/hyresr_arch.py")  # inside a traiNNer-redux checkout
# the pack's traiNNer-redux option files -> their place among traiNNer-redux's templates (their naming:
# <Variant>_fidelity.yml, <Variant>_gan.yml, <Variant>_OTF_gan.yml; test/<Arch>/<Variant>.yml)
TRAINNER_TEMPLATES = {
    "HyReSR_x4_fidelity.yml": "options/_templates/train/HyReSR/HyReSR_fidelity.yml",
    "HyReSR_x4_gan.yml": "options/_templates/train/HyReSR/HyReSR_gan.yml",
    "HyReSR_x4_OTF_gan.yml": "options/_templates/train/HyReSR/HyReSR_OTF_gan.yml",
    "HyReSR_Light_x4_fidelity.yml": "options/_templates/train/HyReSR/HyReSR_Light_fidelity.yml",
    "HyReSR_Tiny_x4_fidelity.yml": "options/_templates/train/HyReSR/HyReSR_Tiny_fidelity.yml",
    "HyReSR_Rest_x1_denoise.yml": "options/_templates/train/HyReSR/HyReSR_Rest_fidelity.yml",
    "HyReSR_test.yml": "options/_templates/test/HyReSR/HyReSR.yml",
}
_INSTALL_LINE = re.compile(r"^#   hyresr install --host traiNNer .*\n", re.M)


def trainner_template(text: str, name: str) -> str:
    """A pack option file as a traiNNer-redux template: without the line about the pack's installer."""
    text, n = _INSTALL_LINE.subn("", text)
    text = text.replace("#   copy this template to", "#   Copy this template to").replace(
        "#   copy to options/test/", "#   Copy to options/test/")
    if "hyresr install" in text:
        raise ContribError(f"options/traiNNer/{name} mentions `hyresr install` where the generator does not "
                           "expect it: update trainner_template in hyresr_arch/tools/contrib.py")
    return text


def trainner_files(source: str) -> dict[Path, str]:
    files = ruff_clean({TRAINNER_ARCH: trainner_arch_source(source)}, TRAINNER_RUFF, packages=("traiNNer/archs",),
                       noqa=("N812", "SLF001"))
    out = {Path("traiNNer-redux") / rel: text for rel, text in files.items()}
    for name, dest in TRAINNER_TEMPLATES.items():
        src = ROOT / "options" / "traiNNer" / name
        if not src.is_file():
            raise ContribError(f"{src} is missing: update TRAINNER_TEMPLATES in hyresr_arch/tools/contrib.py")
        out[Path("traiNNer-redux") / dest] = trainner_template(src.read_text(encoding="utf-8"), name)
    return out


# --------------------------------------------------------------------------------------------
# spandrel's test file and snapshot
# --------------------------------------------------------------------------------------------


def config_kwargs(variant: str, overrides: dict) -> dict:
    """HyReSR arguments of a LOAD_CONFIGS entry that differ from HyReSR's defaults."""
    H = arch_module()
    defaults = dict(H.HyReSR.__init__.__wrapped__.__kwdefaults__)
    kwargs = {**H.VARIANTS[variant], **overrides}
    try:
        inspect.signature(H.HyReSR.__init__.__wrapped__).bind(None, **kwargs)
    except TypeError as err:
        raise ContribError(f"LOAD_CONFIGS entry {variant} {overrides} no longer fits HyReSR: {err}; "
                           "update LOAD_CONFIGS in hyresr_arch/tools/contrib.py") from None
    order = list(defaults)
    return {k: kwargs[k] for k in sorted(kwargs, key=order.index) if _norm(kwargs[k]) != _norm(defaults[k])}


def _norm(v):
    return tuple(v) if isinstance(v, list) else v


def _literal(v) -> str:
    if isinstance(v, str):
        return '"' + v + '"'
    if isinstance(v, (tuple, list)):
        inner = ", ".join(_literal(x) for x in v)
        return f"({inner}{',' if len(v) == 1 else ''})" if isinstance(v, tuple) else f"[{inner}]"
    return repr(v)


def _lambda(kwargs: dict, suffix: str = "") -> list[str]:
    """``lambda: HyReSR(...)`` the way ruff formats it at 88 columns (8-space indent)."""
    args = ", ".join(f"{k}={_literal(v)}" for k, v in kwargs.items())
    one_line = f"        lambda: HyReSR({args}){suffix},"
    if len(one_line) <= 88:
        return [one_line]
    return (["        lambda: HyReSR("] + [f"            {k}={_literal(v)}," for k, v in kwargs.items()]
            + [f"        ){suffix},"])


def _test_name(model_file: str) -> str:
    return "test_" + re.sub(r"\W", "_", model_file.rsplit(".", 1)[0])


def spandrel_test_source() -> str:
    lines = [
        f"from spandrel.architectures.{ARCH_ID} import {ARCH_ID}, {ARCH_ID}Arch",
        "",
        "from .util import (",
        "    ModelFile,",
        "    TestImage,",
        "    assert_image_inference,",
        "    assert_loads_correctly,",
        "    assert_size_requirements,",
        "    disallowed_props,",
        "    skip_if_unchanged,",
        ")",
        "",
        "skip_if_unchanged(__file__)",
        "",
        f'MODEL_URL = "{model_url()}"',
        "",
        "",
        "def test_load():",
        "    assert_loads_correctly(",
        f"        {ARCH_ID}Arch(),",
    ]
    for variant, overrides in LOAD_CONFIGS:
        lines += _lambda(config_kwargs(variant, overrides))
    lines += ["    )", "", "", "def test_load_fused():", "    assert_loads_correctly(", f"        {ARCH_ID}Arch(),"]
    for variant, overrides in FUSED_CONFIGS:
        lines += _lambda(config_kwargs(variant, overrides), ".fuse()")
    lines += ["    )", "", "", "def _model_file(name: str) -> ModelFile:",
              "    return ModelFile.from_url(MODEL_URL + name)", "", "",
              "def test_size_requirements():",
              f'    file = _model_file("{MODEL_FILES[0]}")',
              "    assert_size_requirements(file.load_model())"]
    images = ", ".join(f"TestImage.{i}" for i in TEST_IMAGES)
    for name in MODEL_FILES:
        lines += ["", "", f"def {_test_name(name)}(snapshot):",
                  f'    file = _model_file("{name}")',
                  "    model = file.load_model()",
                  "    assert model == snapshot(exclude=disallowed_props)",
                  f"    assert isinstance(model.model, {ARCH_ID})",
                  "    assert_image_inference(",
                  "        file,",
                  "        model,",
                  f"        [{images}],",
                  "    )"]
    return "\n".join(lines) + "\n"


def snapshot_entry(name: str, desc) -> str:
    """One syrupy (amber) entry for ``assert model == snapshot(exclude=disallowed_props)``."""
    arch = desc.architecture
    req = desc.size_requirements
    tags = "".join(f"      '{t}',\n" for t in desc.tags)
    return (f"# name: {name}\n"
            f"  ImageModelDescriptor(\n"
            f"    architecture={type(arch).__name__}(\n"
            f"      id='{arch.id}',\n"
            f"      name='{arch.name}',\n"
            f"    ),\n"
            f"    input_channels={desc.input_channels},\n"
            f"    output_channels={desc.output_channels},\n"
            f"    purpose='{desc.purpose}',\n"
            f"    scale={desc.scale},\n"
            f"    size_requirements=SizeRequirements(minimum={req.minimum}, multiple_of={req.multiple_of}, "
            f"square={req.square}),\n"
            f"    supports_bfloat16={desc.supports_bfloat16},\n"
            f"    supports_half={desc.supports_half},\n"
            f"    tags=list([\n{tags}    ]),\n"
            f"    tiling=<{type(desc.tiling).__name__}.{desc.tiling.name}: {desc.tiling.value}>,\n"
            f"  )\n"
            f"# ---\n")


def spandrel_snapshot_source(arch) -> str:
    entries = {}
    for name in MODEL_FILES:
        path = SPANDREL / MODELS_DIR / name
        if not path.is_file():
            raise ContribError(f"{path} is missing: run python contrib/spandrel/make_test_models.py")
        entries[_test_name(name)] = snapshot_entry(_test_name(name), arch.load(read_state_dict(path)))
    return "# serializer version: 1\n" + "".join(entries[k] for k in sorted(entries))


def read_state_dict(path: Path) -> dict:
    """As spandrel's ModelLoader reads a file (safetensors, or torch.load with weights_only)."""
    from spandrel import ModelLoader

    return ModelLoader().load_state_dict_from_file(path)


# --------------------------------------------------------------------------------------------
# Lint and formatting: both projects run ruff (line length 88); the generated Python files come out of
# ruff's own fixes and formatter with each project's settings, so a reviewer's ruff finds nothing
# --------------------------------------------------------------------------------------------

# spandrel pins ruff 0.5.0 (requirements-dev.txt); traiNNer-redux's pre-commit hook has 0.5.1 and its
# CI installs the latest: the files are written with 0.5.0 and checked with the others in a checkout.
RUFF_VERSION = "0.5.0"

# The projects' ruff settings (pyproject.toml [tool.ruff]), as read at the commits in README.md.
SPANDREL_RUFF = """\
[tool.ruff]
line-length = 88
indent-width = 4
src = ["libs/spandrel", "libs/spandrel_extra_arches"]
lint.extend-select = ["ANN001", "ANN002", "T201", "B", "C4", "E", "F", "FA", "I", "N", "SIM", "UP", "W"]
lint.ignore = ["E501", "N814", "N999", "SIM105", "SIM108", "SIM117", "SIM118"]

[tool.ruff.lint.per-file-ignores]
"**/__arch_helpers/**/*" = ["N", "ANN"]
"**/__arch/**/*" = ["B006", "B007", "B008", "N", "ANN", "SIM102", "SIM114"]
"**/{tests,scripts}/**/*" = ["N802", "ANN", "T201"]
"""
TRAINNER_RUFF = """\
[tool.ruff]
line-length = 88
indent-width = 4
src = ["traiNNer"]
target-version = "py311"  # their requires-python = ">=3.11"
unsafe-fixes = true

[tool.ruff.lint]
extend-select = ["UP", "E", "W", "F", "I", "N", "ANN001", "ANN002", "ANN201", "ANN202", "ANN204", "ANN205",
                 "ANN206", "PL", "RUF", "B", "C4", "FA", "ISC", "ICN", "G", "PIE", "Q", "SLF", "NPY", "NPY201"]
ignore = ["E501", "PLR2004", "PLR0911", "PLR0912", "PLR0913", "PLR0915", "E741", "E712", "F821", "F403",
          "PLW0603", "N999", "N818", "ISC001", "PLC0415"]
unfixable = ["F841", "F401"]

[tool.ruff.format]
quote-style = "double"
indent-style = "space"
skip-magic-trailing-comma = false
line-ending = "auto"
"""


def _pinned_ruff() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("ruff")
    except PackageNotFoundError:
        found = None
    if found != RUFF_VERSION:
        raise ContribError(f"the generated files are formatted with ruff {RUFF_VERSION} (spandrel's pin), "
                           f"{'not ' + found if found else 'which is not installed'}: "
                           f"pip install ruff=={RUFF_VERSION} (the pack's [test] extra has it)")
    return [sys.executable, "-m", "ruff"]


def ruff_clean(files: dict[Path, str], config: str, packages: tuple[str, ...] = (),
               noqa: tuple[str, ...] = ()) -> dict[Path, str]:
    """``files`` (paths as in the target checkout) after ruff's fixes and formatter with ``config``; a
    ContribError names whatever ruff still finds. ``packages``: folders given an ``__init__.py`` so that
    ruff sorts the project's own imports as first-party. ``noqa``: rules that get a ``# noqa`` comment
    where they fire (as the project's own files do, e.g. traiNNer-redux's ``import torch.nn.functional
    as F  # noqa: N812``)."""
    import subprocess

    ruff = _pinned_ruff()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "pyproject.toml").write_text(config, encoding="utf-8")
        for pkg in packages:  # every level a package, as in the checkout
            for level in [Path(pkg), *Path(pkg).parents][:-1]:
                (root / level).mkdir(parents=True, exist_ok=True)
                (root / level / "__init__.py").touch()
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text, encoding="utf-8")
        args = [str(rel) for rel in files]
        common = ["--no-cache", "--config", str(root / "pyproject.toml")]
        run = functools.partial(subprocess.run, cwd=root, capture_output=True, text=True)
        run([*ruff, "check", *common, "--fix", "--unsafe-fixes", "--quiet", *args])
        formatted = run([*ruff, "format", *common, "--quiet", *args])
        if noqa and not formatted.returncode:
            run([*ruff, "check", *common, "--select", ",".join(noqa), "--add-noqa", "--quiet", *args])
            formatted = run([*ruff, "format", *common, "--quiet", *args])
        if formatted.returncode:
            raise ContribError(f"ruff format failed on the generated files:\n{formatted.stderr}")
        left = run([*ruff, "check", *common, "--quiet", *args])
        if left.returncode:
            raise ContribError(f"ruff {RUFF_VERSION} still finds problems in the generated files (change "
                               f"hyresr_arch.py or the generator):\n{left.stdout}{left.stderr}")
        return {rel: (root / rel).read_text(encoding="utf-8") for rel in files}


# --------------------------------------------------------------------------------------------
# Importing the contributed architecture outside a spandrel checkout
# --------------------------------------------------------------------------------------------


def import_contributed(arch_dir: Path = SPANDREL / ARCH_DIR) -> ModuleType:
    """Import ``arch_dir`` as ``spandrel.architectures.HyReSR`` (its relative imports then resolve
    in the installed spandrel, exactly as after a merge) and return the module."""
    import spandrel.architectures

    name = f"spandrel.architectures.{ARCH_ID}"
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[key]
    spec = importlib.util.spec_from_file_location(name, arch_dir / "__init__.py",
                                                  submodule_search_locations=[str(arch_dir)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[name]
        raise
    setattr(spandrel.architectures, ARCH_ID, module)
    return module


# --------------------------------------------------------------------------------------------
# Generate, check, write
# --------------------------------------------------------------------------------------------


def generate() -> dict[Path, str]:
    """Every generated file (path under contrib/ -> text), from the arch file as it is now."""
    source = arch_source()
    arch_dir = Path("spandrel") / ARCH_DIR
    spandrel_py = ruff_clean({
        ARCH_DIR / "__arch" / f"{ARCH_ID}.py": spandrel_arch_source(source),
        Path("tests") / f"test_{ARCH_ID}.py": spandrel_test_source(),
    }, SPANDREL_RUFF, packages=("libs/spandrel/spandrel",))
    files = {Path("spandrel") / rel: text for rel, text in spandrel_py.items()}
    files[arch_dir / "__arch" / "__init__.py"] = ""
    files[Path("comfyui/hyresr_arch.py")] = source
    files.update(trainner_files(source))
    # the snapshot is what the contributed loader (with the network as generated now) reports
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(CONTRIB / arch_dir, Path(tmp) / ARCH_ID, ignore=shutil.ignore_patterns("__pycache__"))
        for rel, text in files.items():
            if rel.parent.parent == arch_dir:
                (Path(tmp) / ARCH_ID / "__arch" / rel.name).write_text(text, encoding="utf-8")
        module = import_contributed(Path(tmp) / ARCH_ID)
        files[Path("spandrel/tests/__snapshots__") / f"test_{ARCH_ID}.ambr"] = spandrel_snapshot_source(
            getattr(module, f"{ARCH_ID}Arch")())
    return files


def stale_files(files: dict[Path, str] | None = None) -> list[Path]:
    files = generate() if files is None else files
    return [rel for rel, text in files.items()
            if not (CONTRIB / rel).is_file() or (CONTRIB / rel).read_text(encoding="utf-8") != text]


def write_generated() -> list[Path]:
    files = generate()
    changed = stale_files(files)
    for rel in changed:
        _write_text(CONTRIB / rel, files[rel])
    return changed


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _require_fresh() -> None:
    stale = stale_files()
    if stale:
        raise ContribError("contrib/ is stale (" + ", ".join(map(str, stale)) + "): run `hyresr contrib` first")


# --------------------------------------------------------------------------------------------
# Installing into a spandrel checkout / ComfyUI
# --------------------------------------------------------------------------------------------


def install_spandrel(dest: Path) -> list[Path]:
    """Copy the contribution into a spandrel checkout, register it in main_registry.py and the
    README, and write the expected inference outputs (computed with this pack's model)."""
    dest = dest.expanduser().resolve()
    if not (dest / "libs/spandrel/spandrel/architectures").is_dir():
        raise ContribError(f"{dest} is not a spandrel checkout (no libs/spandrel/spandrel/architectures)")
    _require_fresh()
    written = []
    for src in sorted(SPANDREL.rglob("*")):
        rel = src.relative_to(SPANDREL)
        if src.is_file() and rel.parts[0] in ("libs", "tests") and "__pycache__" not in rel.parts \
                and rel.name != ".gitignore":
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / rel)
            written.append(rel)
    written += _write_expected_outputs(dest)
    if _register_in_main_registry(dest / "libs/spandrel/spandrel/__helpers/main_registry.py"):
        written.append(Path("libs/spandrel/spandrel/__helpers/main_registry.py"))
    if _add_readme_line(dest / "README.md"):
        written.append(Path("README.md"))
    return written


def _write_expected_outputs(dest: Path) -> list[Path]:
    """tests/images/outputs/<image>/<model>.png as spandrel's assert_image_inference expects
    them, from this pack's own model (build_from_state_dict), not from the contributed loader."""
    import cv2
    import numpy as np
    import torch

    H = arch_module()
    written = []
    for name in MODEL_FILES:
        model = H.build_from_state_dict(read_state_dict(SPANDREL / MODELS_DIR / name)).eval()
        for image in TEST_IMAGES:
            src = dest / "tests/images/inputs" / TEST_IMAGE_FILES[image]
            bgr = cv2.imread(str(src), cv2.IMREAD_COLOR)
            if bgr is None:
                raise ContribError(f"cannot read spandrel's test image {src}")
            x = torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).astype(np.float32) / 255).permute(2, 0, 1)
            with torch.inference_mode():
                y = model(x[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
            out = cv2.cvtColor(np.clip((y * 255.0).round(), 0, 255).astype(np.uint8), cv2.COLOR_RGB2BGR)
            rel = Path("tests/images/outputs") / Path(TEST_IMAGE_FILES[image]).stem / (Path(name).stem + ".png")
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(dest / rel), out)
            written.append(rel)
    return written


def _register_in_main_registry(path: Path) -> bool:
    text = path.read_text(encoding="utf-8")
    entry = f"    ArchSupport.from_architecture({ARCH_ID}.{ARCH_ID}Arch()),\n"
    if entry in text:
        return False
    block = re.search(r"from \.\.architectures import \(\n(?P<names>(?:    \w+,\n)+)\)", text)
    start = text.rfind("MAIN_REGISTRY.add(\n")
    end = text.find("\n)\n", start) + 1 if start >= 0 else 0
    if block is None or end <= 0:
        raise ContribError(f"{path}: unexpected layout; add `{ARCH_ID}` to the architectures import and "
                           f"`{entry.strip()}` to MAIN_REGISTRY.add(...) by hand")
    names = [n.strip().rstrip(",") for n in block.group("names").splitlines()]

    def isort_key(n: str):  # ruff's isort: CONSTANT-like names first, then case-insensitive
        return (0 if n.isupper() else 1, n.lower())

    names = sorted(names + [ARCH_ID], key=isort_key) if names == sorted(names, key=isort_key) else names + [ARCH_ID]
    new_block = "from ..architectures import (\n" + "".join(f"    {n},\n" for n in names) + ")"
    text = text[:end] + entry + text[end:]  # at the end of the last MAIN_REGISTRY.add(...)
    text = text[:block.start()] + new_block + text[block.end():]
    path.write_text(text, encoding="utf-8")
    return True


def _add_readme_line(path: Path) -> bool:
    if not path.is_file():
        return False
    text = path.read_text(encoding="utf-8")
    if f"[{ARCH_ID}](" in text:
        return False
    line = f"- [{ARCH_ID}]({project_url()}) | [Models]({project_url()}/releases)\n"
    anchor = re.search(r"^#### Single Image Super Resolution\n\n(?:- .*\n|  .*\n)+", text, re.M)
    if anchor is None:
        return False
    path.write_text(text[:anchor.end()] + line + text[anchor.end():], encoding="utf-8")
    return True


def install_trainner(dest: Path) -> list[Path]:
    """Copy the traiNNer-redux files (everything in contrib/traiNNer-redux but its README) into a checkout."""
    dest = dest.expanduser().resolve()
    if not (dest / "traiNNer/archs/__init__.py").is_file():
        raise ContribError(f"{dest} is not a traiNNer-redux checkout (no traiNNer/archs/__init__.py)")
    _require_fresh()
    written = []
    for src in sorted(TRAINNER.rglob("*")):
        rel = src.relative_to(TRAINNER)
        if src.is_file() and rel.name != "README.md" and "__pycache__" not in rel.parts:
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / rel)
            written.append(rel)
    return written


def install_comfyui(dest: Path) -> Path:
    """Copy the node package into ComfyUI's custom_nodes folder (``dest`` is ComfyUI's root or
    its custom_nodes folder)."""
    dest = dest.expanduser().resolve()
    if (dest / "custom_nodes").is_dir():
        dest = dest / "custom_nodes"
    if not dest.is_dir():
        raise ContribError(f"{dest}: no such folder (give ComfyUI's root or its custom_nodes folder)")
    _require_fresh()
    target = dest / COMFYUI_NODE_NAME
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(COMFYUI, target, ignore=shutil.ignore_patterns("__pycache__"))
    return target


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--check", action="store_true", help="only report generated files that are stale (exit 1)")
    parser.add_argument("--spandrel", type=Path, metavar="CHECKOUT",
                        help="add HyReSR to this spandrel checkout (architecture, tests, model files, registry)")
    parser.add_argument("--trainner", type=Path, metavar="CHECKOUT",
                        help="copy the traiNNer-redux files (arch file, templates) into this traiNNer-redux checkout")
    parser.add_argument("--comfyui", type=Path, metavar="DIR",
                        help=f"copy the ComfyUI node to DIR/custom_nodes/{COMFYUI_NODE_NAME} (DIR: ComfyUI's root)")


def main(args: argparse.Namespace) -> int:
    if not SPANDREL.is_dir():
        print(f"hyresr contrib: {CONTRIB} not found; run it from a checkout of the HyReSR repository "
              "(pip install -e .)", file=sys.stderr)
        return 2
    try:
        if args.check:
            stale = stale_files()
            for rel in stale:
                print(f"stale: contrib/{rel}")
            print("contrib/ is up to date" if not stale else "run `hyresr contrib` to regenerate")
            return 1 if stale else 0
        if args.spandrel is None and args.comfyui is None and args.trainner is None:
            changed = write_generated()
            for rel in changed:
                print(f"wrote contrib/{rel}")
            print("contrib/ is up to date" + (f" ({len(changed)} files regenerated)" if changed else ""))
            return 0
        if args.spandrel is not None:
            written = install_spandrel(args.spandrel)
            print(f"added {ARCH_ID} to {args.spandrel} ({len(written)} files). Then, in the checkout:\n"
                  f"  pytest tests/test_{ARCH_ID}.py")
        if args.trainner is not None:
            written = install_trainner(args.trainner)
            print(f"copied {len(written)} files into {args.trainner}. Then, in the checkout:\n"
                  "  python -m pytest tests/test_archs/test_archs.py -k hyresr")
        if args.comfyui is not None:
            print(f"installed the ComfyUI node: {install_comfyui(args.comfyui)} (restart ComfyUI)")
        return 0
    except ContribError as err:
        print(f"hyresr contrib: {err}", file=sys.stderr)
        return 2
