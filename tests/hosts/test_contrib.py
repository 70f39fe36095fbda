"""contrib/: the spandrel contribution and the ComfyUI node.

* Both folders are what ``hyresr contrib`` generates from the arch file now (no drift).
* The contributed ``HyReSRArch`` (imported as ``spandrel.architectures.HyReSR``, as after a
  merge) reads every hyperparameter back, for every small configuration spandrel's test_load
  uses, and reports the same descriptor as ``register_spandrel()``; the model files it ships load
  through it and give the pack's output.
* ``--spandrel`` prepares a checkout (files, registry entry, expected images).
* The ComfyUI node, imported as ComfyUI imports custom nodes, makes spandrel load HyReSR files
  read ComfyUI's way, and a tiled upscale like ComfyUI's stays close to the untiled one.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from spandrel import MAIN_REGISTRY, ArchRegistry, ArchSupport, ImageModelDescriptor, ModelLoader, ModelTiling

from conftest import ROOT, perturbed

import hyresr_arch as H
from hyresr_arch import cli
from hyresr_arch.tools import contrib as C

torch.set_num_threads(1)

MODELS = ROOT / "contrib" / "spandrel" / "tests" / "models"
SMALL_CONFIGS = [(v, o, False) for v, o in C.LOAD_CONFIGS if v in C.SMALL_VARIANTS]
SMALL_CONFIGS += [(v, o, True) for v, o in C.FUSED_CONFIGS if v in C.SMALL_VARIANTS]
SMALL_IDS = [f"{v}-{'-'.join(f'{k}={x}' for k, x in o.items()) or 'defaults'}{'-fused' if f else ''}"
             for v, o, f in SMALL_CONFIGS]


@pytest.fixture(scope="module")
def contributed():
    """The contributed architecture package, imported from contrib/ as spandrel.architectures.HyReSR."""
    return C.import_contributed()


def _probe(channels: int = 3, h: int = 20, w: int = 28) -> torch.Tensor:
    return torch.rand(1, channels, h, w, generator=torch.Generator().manual_seed(5))


# --------------------------------------------------------------------------- no drift


def test_contrib_is_what_the_generator_makes_from_the_arch_file_now(capsys):
    rc = cli.main(["contrib", "--check"])
    out = capsys.readouterr().out
    assert rc == 0, f"contrib/ is stale; run `hyresr contrib` (then commit):\n{out}"


def test_spandrel_copy_is_the_network_part_with_spandrel_conventions():
    copy = (ROOT / "contrib" / "spandrel" / C.ARCH_DIR / "__arch" / "HyReSR.py").read_text()
    tree = ast.parse(copy)
    top = {n.name for n in tree.body if isinstance(n, (ast.ClassDef, ast.FunctionDef))}
    source_tree = ast.parse(C.arch_source())
    network = {n.name for n in source_tree.body if isinstance(n, ast.ClassDef)
               and issubclass(getattr(H.hyresr_arch, n.name, object), torch.nn.Module)}
    assert network <= top, f"network classes missing from the spandrel copy: {network - top}"
    assert "@store_hyperparameters()" in copy and "from spandrel.util import store_hyperparameters" in copy
    names = top | {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    for gone in ("_store_hyperparameters", "register_spandrel", "_register_with_host", "build_from_state_dict",
                 "read_hyperparameters"):
        assert gone not in names, gone
    assert "neosr" not in copy  # nor the docstring paragraph about copying the file into hosts
    # no code runs at import, nothing but torch and spandrel is imported
    assert all(isinstance(n.value, ast.Constant) for n in tree.body if isinstance(n, ast.Expr))
    imported = {(n.module or "").split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom)}
    imported |= {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"__future__", "math", "typing", "torch", "spandrel"}, imported
    assert "ncnn" not in copy.lower()  # the NCNN export path stays in the pack (hyresr export-ncnn)


def test_spandrel_files_follow_spandrel_review_conventions():
    test = (ROOT / "contrib/spandrel/tests" / f"test_{C.ARCH_ID}.py").read_text()
    tree = ast.parse(test)
    module_calls = [ast.unparse(n) for n in tree.body if isinstance(n, ast.Expr)]
    assert "skip_if_unchanged(__file__)" in module_calls  # like spandrel's other architecture tests
    from_url = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == "ModelFile.from_url"]
    assert from_url and all(not c.keywords for c in from_url)  # the URL ends in the file name: no name=
    url = next(ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
               and ast.unparse(n.targets[0]) == "MODEL_URL")
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert url == cfg["metadata"]["url"] + f"/releases/download/{C.MODEL_RELEASE_TAG}/"
    copy = (ROOT / "contrib/spandrel" / C.ARCH_DIR / "__arch" / f"{C.ARCH_ID}.py").read_text()
    assert "do not edit" not in copy.lower() and "generated" not in copy.split("\n\n")[0].lower()
    loader = (ROOT / "contrib/spandrel" / C.ARCH_DIR / "__init__.py").read_text()
    assert "SizeRequirements" not in loader  # none: spandrel omits it


def _ruff_reports(files: dict[Path, str], config: str, packages: tuple[str, ...]) -> str:
    """What the pinned ruff (check, format --check) says about ``files`` laid out as in the checkout."""
    with __import__("tempfile").TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "pyproject.toml").write_text(config)
        for pkg in packages:
            for level in [Path(pkg), *Path(pkg).parents][:-1]:
                (root / level).mkdir(parents=True, exist_ok=True)
                (root / level / "__init__.py").touch()
        for rel, text in files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        out = ""
        for cmd in (["check"], ["format", "--check"]):
            run = subprocess.run([*C._pinned_ruff(), *cmd, "--no-cache", *map(str, files)], cwd=root,
                                 capture_output=True, text=True)
            out += run.stdout + run.stderr if run.returncode else ""
        return out


def test_contributed_python_files_are_clean_under_each_projects_ruff_settings():
    spandrel = ROOT / "contrib/spandrel"
    files = {rel: (spandrel / rel).read_text() for rel in (
        C.ARCH_DIR / "__init__.py", C.ARCH_DIR / "__arch" / f"{C.ARCH_ID}.py", Path(f"tests/test_{C.ARCH_ID}.py"))}
    assert _ruff_reports(files, C.SPANDREL_RUFF, ("libs/spandrel/spandrel",)) == ""
    trainner = {C.TRAINNER_ARCH: (C.TRAINNER / C.TRAINNER_ARCH).read_text()}
    assert _ruff_reports(trainner, C.TRAINNER_RUFF, ("traiNNer/archs",)) == ""
    # and the check can fail: an unformatted line and an unused import are reported
    bad = {C.TRAINNER_ARCH: "import os\nx = dict( a = 1 )\n"}
    assert "F401" in _ruff_reports(bad, C.TRAINNER_RUFF, ("traiNNer/archs",))


def test_comfyui_node_ships_the_arch_file_verbatim():
    assert (ROOT / "contrib" / "comfyui" / "hyresr_arch.py").read_bytes() == (
        Path(H.hyresr_arch.__file__).read_bytes())


# --------------------------------------------------------------------------- the contributed loader


@pytest.mark.parametrize(("variant", "overrides", "fused"), SMALL_CONFIGS, ids=SMALL_IDS)
def test_contributed_arch_reads_every_hyperparameter_and_matches_the_pack(contributed, variant, overrides, fused):
    torch.manual_seed(0)
    model = perturbed(H.HyReSR(**C.config_kwargs(variant, overrides)), seed=1)
    if fused:
        model.fuse()
    sd = model.state_dict()
    arch = contributed.HyReSRArch()
    assert arch.detect(sd)
    H.register_spandrel()  # the pack's own spandrel support: the descriptor to agree with
    reference = MAIN_REGISTRY["HyReSR"].architecture.load(sd)
    for state in (sd, safetensors.torch.load(safetensors.torch.save(sd))):
        desc = arch.load(state)
        assert type(desc.model).__name__ == "HyReSR" and isinstance(desc.model, contributed.HyReSR)
        assert desc.model.hyperparameters == model.hyperparameters
        assert desc.model.is_fused == fused
        x = _probe(desc.input_channels)
        with torch.inference_mode():
            assert torch.equal(desc(x), model(x).clamp(0, 1))
    for field in ("scale", "purpose", "input_channels", "output_channels", "tags", "supports_half",
                  "supports_bfloat16"):
        assert getattr(desc, field) == getattr(reference, field), field
    # spandrel's conventions: no size requirement stated when there is none; tiling discouraged where
    # GlobalMix sees the whole image (measured: up to 4/255 at 512 px tiles, 1/255 without it)
    assert desc.size_requirements.none
    expected_tiling = ModelTiling.DISCOURAGED if model.hyperparameters["global_mix"] else ModelTiling.SUPPORTED
    assert desc.tiling == expected_tiling


def test_contributed_detection_is_not_confused_with_builtins(contributed):
    arch = contributed.HyReSRArch()
    from spandrel.architectures.Compact import Compact
    from spandrel.architectures.SPAN import SPAN

    assert not arch.detect(Compact(num_feat=8, num_conv=2, upscale=2).state_dict())
    assert not arch.detect(SPAN(num_in_ch=3, num_out_ch=3, feature_channels=8, upscale=2).state_dict())


def test_contributed_load_refuses_a_short_hyresr_meta_with_a_clear_error(contributed):
    sd = H.hyresr_tiny(scale=2).state_dict()
    for meta, message in (([3, 3, 6], "6 integers expected, found 3"), ([], "format (empty)"),
                          ([2, 3, 6, 0, 1000, 1000], "format 2 is not supported")):
        with pytest.raises(ValueError, match=re.escape(message)):
            contributed.HyReSRArch().load({**sd, "hyresr_meta": torch.tensor(meta)})


def test_contributed_ratios_come_from_tensor_shapes(contributed):
    read = contributed._read_ratio
    widths = [(16, 20), (24, 30), (32, 40)]  # dims (16, 24, 32), ratio 1.25
    assert read("ffn_ratio", widths, 1250) == 1.25
    # several ratios give these widths: the stored one (the model was built with it) decides
    assert read("ffn_ratio", widths, 1251) == 1.251
    with pytest.raises(ValueError, match="contradicts its tensor shapes"):
        read("ffn_ratio", widths, 2000)
    with pytest.raises(ValueError, match="fit no single ratio"):
        read("ffn_ratio", [(16, 20), (32, 48)], 1250)
    # and the loader uses them: the widths of a model built with other ratios give those ratios
    model = H.HyReSR(**C.config_kwargs("hyresr_tiny", {"ffn_ratio": 1.75, "expert_ratio": 0.5}))
    hp = contributed.HyReSRArch().load(model.state_dict()).model.hyperparameters
    assert (hp["ffn_ratio"], hp["expert_ratio"]) == (1.75, 0.5)


def _upstream_registry(contributed) -> ArchRegistry:
    """spandrel's registry as it will be after the merge: the built-ins, then HyReSR last."""
    registry = ArchRegistry()
    registry.add(*[a for a in MAIN_REGISTRY.architectures("insertion") if a.architecture.id != "HyReSR"])
    registry.add(ArchSupport.from_architecture(contributed.HyReSRArch()))
    return registry


@pytest.mark.parametrize("name", C.MODEL_FILES)
def test_model_files_load_through_the_contributed_arch_and_give_the_packs_output(contributed, name):
    path = MODELS / name
    desc = ModelLoader(registry=_upstream_registry(contributed)).load_from_file(path)
    assert isinstance(desc, ImageModelDescriptor)
    assert type(desc.architecture).__module__.startswith("spandrel.architectures.HyReSR")
    reference = H.build_from_state_dict(safetensors.torch.load_file(path)).eval()
    assert desc.model.hyperparameters == reference.hyperparameters
    x = _probe()
    with torch.inference_mode():
        assert torch.equal(desc(x), reference(x).clamp(0, 1))


def test_model_files_are_small_fp16_and_cover_the_cases():
    sizes = {p.name: p.stat().st_size for p in MODELS.glob("*.safetensors")}
    assert set(sizes) == set(C.MODEL_FILES)
    assert sum(sizes.values()) < 3_500_000, sizes
    seen = set()
    for name in C.MODEL_FILES:
        sd = safetensors.torch.load_file(MODELS / name)
        assert {v.dtype for k, v in sd.items() if k != "hyresr_meta"} == {torch.float16}
        hp, fused = H.read_hyperparameters(sd)
        seen |= {f"x{hp['scale']}", hp["upsampler"], "fused" if fused else "unfused",
                 H.HyReSR(**hp).variant}
    assert {"x2", "x4", "pixelshuffle", "dysample", "fused", "unfused", "hyresr_tiny", "hyresr_light"} <= seen


def test_model_files_metadata_names_no_local_path():
    from safetensors import safe_open

    for name in C.MODEL_FILES:
        with safe_open(MODELS / name, "pt") as f:
            text = json.dumps(f.metadata())
        assert "train_B100" in text or "scikit-image" in text or "patterns" in text, text  # says what data
        assert not re.search(r"(^|[\s(])(/|[A-Za-z]:\\\\|~/)\w", text), text  # ... but no path to it


# --------------------------------------------------------------------------- into a spandrel checkout


def _fake_spandrel_checkout(root: Path) -> None:
    import cv2

    arch = root / "libs/spandrel/spandrel/architectures"
    (arch / "Compact").mkdir(parents=True)
    (root / "libs/spandrel/spandrel/__helpers").mkdir(parents=True)
    (root / "libs/spandrel/spandrel/__helpers/main_registry.py").write_text(
        "from __future__ import annotations\n\nfrom ..architectures import (\n    ATD,\n    SPAN,\n    Compact,\n"
        "    KBNet,\n)\nfrom .registry import ArchRegistry, ArchSupport\n\nMAIN_REGISTRY = ArchRegistry()\n\n"
        "MAIN_REGISTRY.add(\n    ArchSupport.from_architecture(Compact.CompactArch()),\n"
        "    ArchSupport.from_architecture(SPAN.SPANArch()),\n)\n")
    (root / "README.md").write_text("# spandrel\n\n#### Single Image Super Resolution\n\n- [ESRGAN](u)\n"
                                    "  - Models: [x](y)\n- [SPAN](u) | [Models](v)\n\n#### Face Restoration\n")
    inputs = root / "tests/images/inputs"
    inputs.mkdir(parents=True)
    g = np.random.default_rng(0)
    for size in (16, 32, 64):
        cv2.imwrite(str(inputs / f"{size}x{size}.png"), g.integers(0, 256, (size, size, 3), dtype=np.uint8))


def test_install_into_a_spandrel_checkout_registers_and_writes_expected_images(tmp_path, monkeypatch):
    import cv2

    monkeypatch.setattr(C.shutil, "which", lambda name: None)  # no ruff here: files as generated
    _fake_spandrel_checkout(tmp_path)
    C.install_spandrel(tmp_path)
    assert (tmp_path / C.ARCH_DIR / "__init__.py").read_bytes() == (ROOT / "contrib/spandrel" / C.ARCH_DIR /
                                                                   "__init__.py").read_bytes()
    for name in C.MODEL_FILES:
        assert (tmp_path / "tests/models" / name).is_file()
        scale = int(name[0])
        for size in (16, 32, 64):
            out = cv2.imread(str(tmp_path / f"tests/images/outputs/{size}x{size}" / name.replace(".safetensors",
                                                                                               ".png")))
            assert out.shape == (size * scale, size * scale, 3)
    registry = (tmp_path / "libs/spandrel/spandrel/__helpers/main_registry.py").read_text()
    assert "    HVICIDNet" not in registry and "    Compact,\n    HyReSR,\n    KBNet,\n" in registry
    assert registry.endswith("    ArchSupport.from_architecture(HyReSR.HyReSRArch()),\n)\n")
    readme = (tmp_path / "README.md").read_text()
    assert readme.index("[HyReSR]") > readme.index("[SPAN]") and readme.index("[HyReSR]") < readme.index("#### Face")
    C.install_spandrel(tmp_path)  # a second run changes nothing
    assert (tmp_path / "libs/spandrel/spandrel/__helpers/main_registry.py").read_text() == registry
    assert (tmp_path / "README.md").read_text() == readme


# --------------------------------------------------------------------------- traiNNer-redux


class _Registry:
    """traiNNer-redux's ``ARCH_REGISTRY`` as arch files use it: ``register()`` decorates a function
    and files it under its lowercased name (a duplicate name is an error)."""

    def __init__(self) -> None:
        self.obj: dict = {}

    def register(self, suffix: str | None = None):
        def deco(fn):
            name = fn.__name__.lower()
            assert name not in self.obj, name
            self.obj[name] = fn
            return fn

        return deco


@pytest.fixture(scope="module")
def trainner_copy():
    """contrib/traiNNer-redux/traiNNer/archs/hyresr_arch.py imported as traiNNer-redux imports it, with
    ``traiNNer.utils.registry`` holding a registry like theirs; (module, registry)."""
    import importlib.util
    import types

    registry = _Registry()
    names = ["traiNNer", "traiNNer.utils", "traiNNer.utils.registry", "traiNNer.archs", "traiNNer.archs.hyresr_arch"]
    saved = {n: sys.modules.get(n) for n in names}
    for n in names[:4]:
        sys.modules[n] = types.ModuleType(n)
    sys.modules["traiNNer.utils.registry"].ARCH_REGISTRY = registry
    spec = importlib.util.spec_from_file_location(names[-1], C.TRAINNER / C.TRAINNER_ARCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[names[-1]] = module
    try:
        spec.loader.exec_module(module)
        yield module, registry
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def test_trainner_copy_registers_each_variant_by_decorator_and_imports_only_torch(trainner_copy):
    module, registry = trainner_copy
    assert set(registry.obj) == set(H.BUILDERS)
    source = (C.TRAINNER / C.TRAINNER_ARCH).read_text()
    tree = ast.parse(source)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    for name in H.BUILDERS:
        assert [ast.unparse(d) for d in functions[name].decorator_list] == ["ARCH_REGISTRY.register()"], name
    imported = {(n.module or "").split(".")[0] for n in tree.body if isinstance(n, ast.ImportFrom)}
    imported |= {a.name.split(".")[0] for n in tree.body if isinstance(n, ast.Import) for a in n.names}
    assert imported <= {"__future__", "math", "typing", "collections", "torch", "traiNNer"}, imported
    assert "ncnn" not in source.lower()  # the NCNN export path stays in the pack (hyresr export-ncnn)
    assert all(isinstance(n.value, ast.Constant) for n in tree.body if isinstance(n, ast.Expr))  # no code at import
    for gone in ("torch.distributed", "logging", "warnings", "sys.argv", "register_spandrel", "hyperparameters"):
        assert gone not in source, gone
    for name in H.BUILDERS:  # every variant builds with only scale=, as traiNNer-redux calls it
        assert isinstance(registry.obj[name](scale=2), module.HyReSR)


@pytest.mark.parametrize("variant", ["hyresr_tiny", "hyresr_light"])
def test_trainner_copy_computes_like_the_pack_and_shares_its_checkpoints(trainner_copy, variant):
    module, registry = trainner_copy
    torch.manual_seed(0)
    pack = perturbed(H.BUILDERS[variant](scale=2, upsampler="dysample"), seed=2)
    theirs = registry.obj[variant](scale=2, upsampler="dysample").eval()
    theirs.load_state_dict(pack.state_dict(), strict=True)
    assert list(theirs.state_dict()) == list(pack.state_dict())
    assert not any(n.endswith("route_bias") for n, _ in theirs.named_parameters())  # a buffer there
    x = _probe()
    with torch.inference_mode():
        assert torch.equal(theirs(x), pack(x))
        # a traiNNer-redux checkpoint loads with the pack (and so with spandrel)
        assert torch.equal(H.build_from_state_dict(theirs.state_dict()).eval()(x), pack(x))


def test_trainner_copy_balances_experts_without_a_collective(trainner_copy, monkeypatch):
    module, registry = trainner_copy
    calls = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda t, *a, **k: calls.append(t.shape))
    x = _probe(h=16, w=16)
    theirs = registry.obj["hyresr_tiny"](scale=2).train()
    before = [m.route_bias.clone() for m in theirs.modules() if isinstance(m, module.TokenMoE)]
    theirs(x).mean().backward()
    after = [m.route_bias for m in theirs.modules() if isinstance(m, module.TokenMoE)]
    assert calls == [] and any(not torch.equal(a, b) for a, b in zip(after, before))  # balanced, locally
    H.hyresr_tiny(scale=2).train()(x)  # the pack's own file all-reduces under DDP: the check sees it
    assert len(calls) == 1


def test_trainner_templates_are_the_packs_option_files():
    import yaml

    assert set(C.TRAINNER_TEMPLATES) == {p.name for p in (ROOT / "options/traiNNer").glob("*.yml")} - {
        "HyReSR_x2_fidelity.yml", "HyReSR_Light_x2_fidelity.yml"}  # x2: the same files with scale 2
    for name, dest in C.TRAINNER_TEMPLATES.items():
        text = (C.TRAINNER / dest).read_text()
        assert "hyresr install" not in text
        assert yaml.safe_load(text) == yaml.safe_load((ROOT / "options/traiNNer" / name).read_text()), name
        assert yaml.safe_load(text)["network_g"]["type"] in H.BUILDERS


def test_trainner_install_copies_the_pull_requests_files_into_a_checkout(tmp_path):
    with pytest.raises(C.ContribError, match="not a traiNNer-redux checkout"):
        C.install_trainner(tmp_path)
    (tmp_path / "traiNNer/archs").mkdir(parents=True)
    (tmp_path / "traiNNer/archs/__init__.py").write_text("")
    written = C.install_trainner(tmp_path)
    assert {str(p) for p in written} == _listed_files(C.TRAINNER / "README.md")
    for rel in written:
        assert (tmp_path / rel).read_bytes() == (C.TRAINNER / rel).read_bytes()


def _listed_files(readme: Path) -> set[str]:
    """Paths in backticks in the README's "files in the pull request" table."""
    text = readme.read_text()
    section = text[text.index("## Files in the pull request"):]
    section = section[: section.find("\n## ", 1)]
    return set(re.findall(r"^\| `([^`]+)`", section, re.M))


def test_trainner_readme_lists_exactly_the_pull_requests_files():
    shipped = {str(p.relative_to(C.TRAINNER)) for p in C.TRAINNER.rglob("*") if p.is_file()
               and "__pycache__" not in p.parts and p.name != "README.md"}
    assert _listed_files(C.TRAINNER / "README.md") == shipped


def test_spandrel_readme_names_the_release_assets_and_the_pr_files():
    readme = (ROOT / "contrib/spandrel/README.md").read_text()
    for name in C.MODEL_FILES:
        assert C.model_url() + name in readme, name
    listed = _listed_files(ROOT / "contrib/spandrel/README.md")
    assert {str(C.ARCH_DIR / "__init__.py"), str(C.ARCH_DIR / "__arch" / f"{C.ARCH_ID}.py"),
            f"tests/test_{C.ARCH_ID}.py", f"tests/__snapshots__/test_{C.ARCH_ID}.ambr"} <= listed
    assert not any(p.startswith("tests/models") for p in listed)  # release assets, not PR files


# --------------------------------------------------------------------------- ComfyUI


def _install_node(tmp_path: Path) -> Path:
    node = tmp_path / "ComfyUI" / "custom_nodes" / C.COMFYUI_NODE_NAME
    shutil.copytree(ROOT / "contrib" / "comfyui", node, ignore=shutil.ignore_patterns("__pycache__"))
    return node


# What ComfyUI does, in a fresh interpreter: nodes.load_custom_node (module from the folder's
# __init__.py; the module name is the folder name in older ComfyUI, the path with "." -> "_x_"
# in newer), then the "Load Upscale Model" node: comfy.utils.load_torch_file(safe_load=True)
# and spandrel's ModelLoader().load_from_state_dict(sd).eval(), which must be an
# ImageModelDescriptor.
COMFYUI_SCRIPT = r"""
import importlib.util, json, os, sys
import safetensors.torch, torch
from spandrel import MAIN_REGISTRY, ImageModelDescriptor, ModelLoader

node, module_name, model_files = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
assert "HyReSR" not in MAIN_REGISTRY
spec = importlib.util.spec_from_file_location(module_name, os.path.join(node, "__init__.py"))
module = importlib.util.module_from_spec(spec)
sys.modules[module_name] = module
spec.loader.exec_module(module)
assert module.NODE_CLASS_MAPPINGS == {} and module.NODE_DISPLAY_NAME_MAPPINGS == {}
assert "HyReSR" in MAIN_REGISTRY
assert "hyresr_arch" not in sys.modules  # the node's own copy, not the pack, was used

def load_torch_file(path):  # comfy.utils.load_torch_file(path, safe_load=True)
    if path.endswith(".safetensors"):
        return safetensors.torch.load_file(path)
    pl_sd = torch.load(path, map_location="cpu", weights_only=True)
    if "state_dict" in pl_sd:
        return pl_sd["state_dict"]
    if len(pl_sd) == 1:
        sd = next(iter(pl_sd.values()))
        return sd if isinstance(sd, dict) else pl_sd
    return pl_sd

x = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0))
outputs = {}
for path in model_files:
    out = ModelLoader().load_from_state_dict(load_torch_file(path)).eval()
    assert isinstance(out, ImageModelDescriptor), type(out)
    assert out.architecture.id == "HyReSR" and type(out.model).__module__ == module_name + ".hyresr_arch"
    outputs[os.path.basename(path)] = out(x).tolist()
print(json.dumps(outputs))
"""


@pytest.mark.parametrize("style", ["folder-name", "path"])
def test_comfyui_node_import_lets_spandrel_load_hyresr_files_read_comfyuis_way(tmp_path, style):
    node = _install_node(tmp_path)
    module_name = node.name if style == "folder-name" else str(node).replace(".", "_x_")
    ema = perturbed(H.hyresr_tiny(scale=2), seed=3)
    raw = perturbed(H.hyresr_tiny(scale=2), seed=4)
    pth = tmp_path / "net_g_1000.pth"  # BasicSR: params + params_ema (ComfyUI keeps both; spandrel picks the EMA)
    torch.save({"params": raw.state_dict(), "params_ema": ema.state_dict()}, pth)
    single = tmp_path / "neosr.pth"  # one wrapper key: ComfyUI unwraps it itself
    torch.save({"params": ema.state_dict()}, single)
    files = [str(MODELS / C.MODEL_FILES[0]), str(pth), str(single)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ""}
    run = subprocess.run([sys.executable, "-c", COMFYUI_SCRIPT, str(node), module_name, json.dumps(files)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    outputs = {k: torch.tensor(v) for k, v in json.loads(run.stdout.splitlines()[-1]).items()}
    x = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(0))
    reference = H.build_from_state_dict(safetensors.torch.load_file(files[0])).eval()
    with torch.inference_mode():
        assert torch.allclose(outputs[C.MODEL_FILES[0]], reference(x).clamp(0, 1), atol=1e-6)
        expected = ema.eval()(x).clamp(0, 1)
    for name in ("net_g_1000.pth", "neosr.pth"):
        assert torch.allclose(outputs[name], expected, atol=1e-6), name


def comfyui_tiled_scale(samples: torch.Tensor, function, tile: int, overlap: int, scale: int) -> torch.Tensor:
    """ComfyUI's comfy.utils.tiled_scale for images, written from its description: tile starts every
    ``tile - overlap`` px (the last clamped to end ``overlap`` px before the edge, so it may be
    short), a whole image no larger than one tile in one call; each tile's output is weighted by a
    mask that ramps linearly over ``overlap * scale`` px at all four edges, and the weighted sum is
    divided by the summed weights."""
    b, _, h, w = samples.shape
    out = torch.empty(b, 3, h * scale, w * scale)
    for i in range(b):
        s = samples[i : i + 1]
        if h <= tile and w <= tile:
            out[i : i + 1] = function(s)
            continue
        acc = torch.zeros(1, 3, h * scale, w * scale)
        weight = torch.zeros(1, 1, h * scale, w * scale)
        starts = [range(0, n - overlap, tile - overlap) if n > tile else [0] for n in (h, w)]
        for y0 in starts[0]:
            for x0 in starts[1]:
                y, x = max(0, min(h - overlap, y0)), max(0, min(w - overlap, x0))
                part = function(s[..., y : y + min(tile, h - y), x : x + min(tile, w - x)])
                mask = torch.ones(1, 1, *part.shape[-2:])
                feather = overlap * scale
                for dim in (2, 3):
                    if feather >= mask.shape[dim]:
                        continue
                    for t in range(feather):
                        mask.narrow(dim, t, 1).mul_((t + 1) / feather)
                        mask.narrow(dim, mask.shape[dim] - 1 - t, 1).mul_((t + 1) / feather)
                ph = min(part.shape[2], h * scale - y * scale)
                pw = min(part.shape[3], w * scale - x * scale)
                acc[..., y * scale : y * scale + ph, x * scale : x * scale + pw] += (part * mask)[..., :ph, :pw]
                weight[..., y * scale : y * scale + ph, x * scale : x * scale + pw] += mask[..., :ph, :pw]
        out[i : i + 1] = acc / weight
    return out


def _photo(h: int, w: int) -> torch.Tensor:
    """A crop of a real photo when the shared data is there (tiling errors show on texture), else
    a smooth synthetic image."""
    import cv2

    files = sorted((ROOT.parent / "shared" / "data" / "train_B100").glob("*.png"))
    if files:
        img = cv2.cvtColor(cv2.imread(str(files[0])), cv2.COLOR_BGR2RGB)
        img = np.tile(img, (1 + h // img.shape[0], 1 + w // img.shape[1], 1))[:h, :w]
        return torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    yy, xx = torch.meshgrid(torch.linspace(0, 6, h), torch.linspace(0, 9, w), indexing="ij")
    return torch.stack([yy.sin(), xx.cos(), (yy + xx).sin()])[None] * 0.4 + 0.5


@pytest.mark.parametrize(("model", "size", "tile", "overlap"), [
    (C.MODEL_FILES[0], (40, 560), 512, 32),  # ComfyUI's tile and overlap: two tiles, the second 80 px wide
    (C.MODEL_FILES[2], (40, 560), 512, 32),  # light (GlobalMix), DySample, fused
    (C.MODEL_FILES[0], (96, 120), 64, 16),  # small tiles: a 2 x 3 grid, every edge blended
], ids=["tiny-x2-512-32", "light-x4-512-32", "tiny-x2-64-16"])
def test_comfyui_style_tiled_upscale_stays_close_to_untiled(model, size, tile, overlap):
    H.register_spandrel()
    desc = ModelLoader().load_from_file(MODELS / model).eval()
    image = _photo(*size).permute(0, 2, 3, 1)  # ComfyUI IMAGE: B, H, W, C
    in_img = image.movedim(-1, -3)
    with torch.inference_mode():
        tiled = comfyui_tiled_scale(in_img, lambda a: desc(a.float()), tile, overlap, desc.scale)
        whole = desc(in_img)
    tiled = torch.clamp(tiled.movedim(-3, -1), min=0, max=1.0)
    whole = whole.movedim(-3, -1)
    err = (tiled - whole).abs()
    assert tiled.shape == (1, size[0] * desc.scale, size[1] * desc.scale, 3)
    assert err.mean() < 0.5 / 255 and err.max() < 4 / 255, (err.mean().item() * 255, err.max().item() * 255)
