"""HyReSR inside its training hosts: BasicSR end to end, the traiNNer-redux arch-test contract,
torch DDP (what every host uses for multi-GPU), registration, and `hyresr install`.

The real neosr / traiNNer-redux checkouts cannot be imported here (heavy dependencies); their
registries are imitated by minimal fake packages only as a supplement to the manual runs against
the real hosts described in the host-integration note.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import hyresr_arch

ROOT = Path(__file__).resolve().parents[2]
ARCH_FILE = ROOT / "hyresr_arch" / "hyresr_arch.py"
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _run(args, cwd, timeout=300):
    proc = subprocess.run([sys.executable, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


# -- BasicSR end to end --------------------------------------------------------------------------

def _write_pairs(folder: Path, n: int, size: int, scale: int, seed: int) -> None:
    """Smooth random HR images and their MATLAB-bicubic LR (BasicSR's imresize)."""
    import cv2
    from registry_hooks import basicsr as hook

    hook.prepare()
    from basicsr.utils.matlab_functions import imresize

    rng = np.random.default_rng(seed)
    for sub in ("hr", "lr"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        small = rng.random((size // 8, size // 8, 3)).astype(np.float32)
        hr = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)
        lr = imresize(hr, 1 / scale).clip(0, 1)
        cv2.imwrite(str(folder / "hr" / f"{i:03d}.png"), (hr * 255).round().astype(np.uint8))
        cv2.imwrite(str(folder / "lr" / f"{i:03d}.png"), (lr * 255).round().astype(np.uint8))


@pytest.fixture(scope="module")
def basicsr_run(tmp_path_factory):
    """Train hyresr_tiny x4 for 4 iterations with options/basicsr/train_hyresr_tiny_x4.yml, paths
    and sizes pointed at tiny generated images, through `python -m registry_hooks.basicsr`."""
    work = tmp_path_factory.mktemp("basicsr")
    _write_pairs(work / "train", n=3, size=64, scale=4, seed=0)
    _write_pairs(work / "val", n=1, size=32, scale=4, seed=1)
    opt = yaml.safe_load((ROOT / "options" / "basicsr" / "train_hyresr_tiny_x4.yml").read_text())
    opt["name"] = "ci_tiny_x4"
    opt["num_gpu"] = 0
    train, val = opt["datasets"]["train"], opt["datasets"]["val"]
    train.update(dataroot_gt=str(work / "train" / "hr"), dataroot_lq=str(work / "train" / "lr"), gt_size=64,
                 batch_size_per_gpu=2, num_worker_per_gpu=0, dataset_enlarge_ratio=10)
    val.update(dataroot_gt=str(work / "val" / "hr"), dataroot_lq=str(work / "val" / "lr"))
    opt["train"]["total_iter"] = 4
    opt["train"]["scheduler"]["periods"] = [4]
    opt["val"]["val_freq"] = 4
    opt["logger"].update(print_freq=1, save_checkpoint_freq=4, use_tb_logger=False)
    opt_path = work / "ci_tiny_x4.yml"
    opt_path.write_text(yaml.safe_dump(opt))
    proc = _run(["-m", "registry_hooks.basicsr", "-opt", str(opt_path)], cwd=work)
    return work, opt, proc


def test_basicsr_trains_from_a_real_option_file(basicsr_run):
    work, opt, proc = basicsr_run
    exp = work / "experiments" / opt["name"]
    log = next(exp.glob("train_*.log")).read_text()
    assert "iter:       4," in log, "BasicSR did not log iteration 4"
    assert "l_pix" in log, "BasicSR logged no training loss"
    assert "# psnr:" in log, "validation did not run"
    for ckpt in (exp / "models" / "net_g_4.pth", exp / "models" / "net_g_latest.pth"):
        assert ckpt.is_file()
    assert (exp / "training_states" / "4.state").is_file()


def test_basicsr_checkpoint_has_basicsr_keys_and_reloads(basicsr_run):
    work, opt, _ = basicsr_run
    ckpt = torch.load(work / "experiments" / opt["name"] / "models" / "net_g_latest.pth", map_location="cpu",
                      weights_only=True)
    assert set(ckpt) == {"params", "params_ema"}
    assert all(isinstance(v, torch.Tensor) and type(v) is torch.Tensor for v in ckpt["params"].values())
    model = hyresr_arch.build_from_state_dict(hyresr_arch.unwrap_state_dict(ckpt)).eval()
    assert model.scale == 4
    for key in ("params", "params_ema"):
        model.load_state_dict(ckpt[key])  # strict: both halves are complete HyReSR state dicts
    with torch.inference_mode():
        assert model(torch.rand(1, 3, 12, 12)).shape == (1, 3, 48, 48)
    # training changed the weights (the EMA copy lags the trained net, so they differ)
    assert any(not torch.equal(ckpt["params"][k], ckpt["params_ema"][k]) for k in ckpt["params"])


def test_basicsr_test_pipeline_runs_the_test_option_file(basicsr_run):
    work, opt, _ = basicsr_run
    test_opt = yaml.safe_load((ROOT / "options" / "basicsr" / "test_hyresr_x4.yml").read_text())
    test_opt["name"] = "ci_test"
    test_opt["num_gpu"] = 0
    test_opt["network_g"]["type"] = "hyresr_tiny"
    test_opt["datasets"] = {"test_1": {**test_opt["datasets"]["test_1"],
                                       "dataroot_gt": str(work / "val" / "hr"), "dataroot_lq": str(work / "val" / "lr")}}
    test_opt["path"]["pretrain_network_g"] = str(work / "experiments" / opt["name"] / "models" / "net_g_latest.pth")
    path = work / "ci_test.yml"
    path.write_text(yaml.safe_dump(test_opt))
    _run(["-m", "registry_hooks.basicsr", "--test", "-opt", str(path)], cwd=work)
    results = work / "results" / "ci_test"
    assert list((results / "visualization" / "Set5").glob("*.png")), "test_pipeline saved no image"
    assert "# psnr:" in next(results.glob("test_*.log")).read_text()


# -- traiNNer-redux's arch-test contract ----------------------------------------------------------

@pytest.mark.parametrize("name", sorted(hyresr_arch.BUILDERS))
def test_trainner_arch_contract(name):
    """Built with only scale= for scales 1-4, 1x3x16x16 in: eval shape (1, 3, 16s, 16s); train
    mode: finite output, loss and gradients; one AdamW step on an L1 loss changes the parameters."""
    builder = hyresr_arch.BUILDERS[name]
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: one thread is faster and immune to busy CPUs
    try:
        _contract(name, builder)
    finally:
        torch.set_num_threads(threads)


def _contract(name, builder):
    lq = torch.rand(1, 3, 16, 16)
    for scale in (1, 2, 3, 4):
        model = builder(scale=scale).eval()
        with torch.inference_mode():
            assert model(lq).shape == (1, 3, 16 * scale, 16 * scale), f"{name} x{scale}"
        model.train()
        gt = torch.rand(1, 3, 16 * scale, 16 * scale)
        before = [p.detach().clone() for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(model.parameters())
        out = model(lq)
        assert out.shape == gt.shape and torch.isfinite(out).all()
        loss = torch.nn.functional.l1_loss(out, gt)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
        after = [p.detach() for p in model.parameters() if p.requires_grad]
        assert all(torch.isfinite(p).all() for p in after)
        assert any(not torch.equal(a, b) for a, b in zip(before, after)), f"{name} x{scale}: AdamW changed nothing"


# -- DDP ---------------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same initial weights on both ranks (DDP also broadcasts rank 0's)
        model = DDP(hyresr_arch.hyresr_tiny(scale=2), find_unused_parameters=False)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        gen = torch.Generator().manual_seed(100 + rank)  # different data per rank
        calls = []  # the network's own collectives (DDP's gradient buckets go through its C++ reducer)
        all_reduce = dist.all_reduce
        dist.all_reduce = lambda *a, **k: calls.append(1) or all_reduce(*a, **k)
        for _ in range(3):
            lq = torch.rand(2, 3, 16, 16, generator=gen)
            gt = torch.rand(2, 3, 32, 32, generator=gen)
            loss = torch.nn.functional.l1_loss(model(lq), gt)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        flat = torch.cat([p.detach().flatten() for p in model.module.parameters() if p.requires_grad])
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        torch.save({"gathered": gathered, "state": model.module.state_dict(), "collectives": len(calls)},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_ddp_two_ranks_gloo_end_with_identical_parameters(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    g0, g1 = r0["gathered"]
    assert torch.equal(g0, g1), "ranks diverged: DDP gradients were not all-reduced identically"
    init = torch.cat([p.flatten() for p in _init_tiny().parameters() if p.requires_grad])
    assert not torch.equal(g0, init), "no training happened"
    for k in r0["state"]:  # buffers too (e.g. MoE balancing state updated in the forward)
        assert torch.allclose(r0["state"][k].float(), r1["state"][k].float()), k
    # one all-reduce of the MoE loads per training step (all 6 layers together), not one per layer
    assert r0["collectives"] == r1["collectives"] == 3
    assert any(v.abs().sum() > 0 for k, v in r0["state"].items() if k.endswith("route_bias"))


def _init_tiny():
    torch.manual_seed(0)
    return hyresr_arch.hyresr_tiny(scale=2)


# -- registration ----------------------------------------------------------------------------------

def _py(code: str, cwd: Path, extra_path: Path | None = None):
    env = dict(ENV)
    if extra_path is not None:
        env["PYTHONPATH"] = f"{extra_path}{os.pathsep}{env['PYTHONPATH']}"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc.stdout


def test_import_registers_with_basicsr_and_reimport_is_harmless(tmp_path):
    out = _py(f"""
        import importlib, importlib.util, sys
        spec = importlib.util.spec_from_file_location("hosts", {str(ROOT / "hyresr_arch/tools/hosts.py")!r})
        hosts = sys.modules["hosts"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(hosts)  # by its path: hyresr_arch is not imported yet
        hosts.apply_basicsr_compat()
        from basicsr.utils.registry import ARCH_REGISTRY
        import hyresr_arch
        names = {sorted(hyresr_arch.BUILDERS)!r}
        assert all(n in ARCH_REGISTRY for n in names), "not registered with basicsr on import"
        first = {{n: ARCH_REGISTRY.get(n) for n in names}}
        importlib.reload(hyresr_arch.hyresr_arch)  # a re-import of the file
        spec = importlib.util.spec_from_file_location("hyresr_arch_copy", {str(ARCH_FILE)!r})
        copy = importlib.util.module_from_spec(spec); spec.loader.exec_module(copy)  # a second module name
        hyresr_arch.register_basicsr()
        assert {{n: ARCH_REGISTRY.get(n) for n in names}} == first, "re-import replaced the registered builders"
        assert sum(k in names for k in ARCH_REGISTRY._obj_map) == len(names)
        net = ARCH_REGISTRY.get("hyresr_tiny")(upscale=2)
        assert net.scale == 2 and ARCH_REGISTRY.get("hyresr_light")(scale=3).scale == 3
        assert "neosr" not in sys.modules and "traiNNer" not in sys.modules
        print("OK")
    """, cwd=tmp_path)
    assert "OK" in out


_FAKE_REGISTRY = '''
class Registry:
    def __init__(self, name, lower=False):
        self._name, self._obj_map, self.lower = name, {}, lower
    def register(self, obj=None):
        def deco(o):
            key = o.__name__.lower() if self.lower else o.__name__
            assert key not in self._obj_map, f"An object named '{key}' was already registered"
            self._obj_map[key] = o
            return o
        return deco(obj) if obj is not None else deco
    def get(self, name):
        return self._obj_map[name.lower() if self.lower else name]
    def __contains__(self, name):
        return name in self._obj_map
ARCH_REGISTRY = Registry("arch", lower=LOWER)
'''


def _fake_host(root: Path, package: str, lower: bool, net_opt_scale: int | None) -> None:
    pkg = root / package
    (pkg / "utils").mkdir(parents=True)
    (pkg / "archs").mkdir()
    for init in (pkg / "__init__.py", pkg / "utils" / "__init__.py", pkg / "archs" / "__init__.py"):
        init.write_text("")
    (pkg / "utils" / "registry.py").write_text(_FAKE_REGISTRY.replace("LOWER", str(lower)))
    if package == "neosr":
        body = (f"    return {net_opt_scale}, True\n" if net_opt_scale else
                "    raise ValueError(\"Didn't get a config! Please link the config file using -opt\")\n")
        (pkg / "archs" / "arch_util.py").write_text("def net_opt():\n" + body)
    shutil.copyfile(ARCH_FILE, pkg / "archs" / "hyresr_arch.py")


def test_fake_neosr_registers_case_sensitive_names_and_reads_scale_lazily(tmp_path):
    _fake_host(tmp_path, "neosr", lower=False, net_opt_scale=2)
    out = _py("""
        import sys, importlib
        import neosr.archs.hyresr_arch as arch
        from neosr.utils.registry import ARCH_REGISTRY
        for n in ("hyresr_tiny", "hyresr_light", "hyresr", "hyresr_sr", "hyresr_rest"):
            assert n in ARCH_REGISTRY, n
        assert ARCH_REGISTRY.get("hyresr_tiny")().scale == 2          # from net_opt(), at build time
        assert ARCH_REGISTRY.get("hyresr_tiny")(scale=3).scale == 3   # an explicit kwarg wins
        importlib.reload(arch)                                        # neosr re-imports on each build
        assert "basicsr" not in sys.modules
        print("OK")
    """, cwd=tmp_path, extra_path=tmp_path)
    assert "OK" in out


def test_fake_neosr_import_without_options_does_not_fail(tmp_path):
    _fake_host(tmp_path, "neosr", lower=False, net_opt_scale=None)  # net_opt() raises, as under pytest
    out = _py("""
        import warnings
        import neosr.archs.hyresr_arch
        from neosr.utils.registry import ARCH_REGISTRY
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            assert ARCH_REGISTRY.get("hyresr_tiny")().scale == 4
        print("OK")
    """, cwd=tmp_path, extra_path=tmp_path)
    assert "OK" in out


def test_fake_trainner_registers_lowercase_names_built_with_scale(tmp_path):
    _fake_host(tmp_path, "traiNNer", lower=True, net_opt_scale=None)
    out = _py("""
        import sys, importlib
        import traiNNer.archs.hyresr_arch as arch
        from traiNNer.utils.registry import ARCH_REGISTRY
        for n in ("hyresr_tiny", "hyresr_light", "hyresr", "hyresr_sr", "hyresr_rest"):
            assert n in ARCH_REGISTRY, n
        assert ARCH_REGISTRY.get("hyresr_tiny")(scale=3).scale == 3
        importlib.reload(arch)
        assert "basicsr" not in sys.modules and "neosr" not in sys.modules
        print("OK")
    """, cwd=tmp_path, extra_path=tmp_path)
    assert "OK" in out


# -- hyresr install ---------------------------------------------------------------------------------

def _checkout(root: Path, host: str) -> Path:
    from registry_hooks import neosr, traiNNer

    mod = neosr if host == "neosr" else traiNNer
    for marker in mod.MARKERS:
        (root / marker).parent.mkdir(parents=True, exist_ok=True)
        (root / marker).write_text("# host file\n")
    for folder in ("train", "test"):  # both hosts ship an options/ folder (traiNNer-redux: with _templates/)
        (root / "options" / "_templates" / folder).mkdir(parents=True, exist_ok=True)
    return root


@pytest.mark.parametrize("host", ["neosr", "traiNNer"])
def test_install_copies_refuses_to_clobber_and_uninstalls_exactly(tmp_path, host, capsys):
    from hyresr_arch import install
    from hyresr_arch.cli import build_parser

    root = _checkout(tmp_path / host, host)
    before = {p for p in root.rglob("*")}
    args = build_parser().parse_args(["install", "--host", host, "--root", str(root)])
    assert install.main(args) == 0
    arch_dest = root / ("neosr/archs" if host == "neosr" else "traiNNer/archs") / "hyresr_arch.py"
    assert arch_dest.read_bytes() == ARCH_FILE.read_bytes()
    printed = capsys.readouterr().out
    assert str(arch_dest) in printed
    if host == "traiNNer":
        assert (root / "options/_templates/train/HyReSR/HyReSR_x4_fidelity.yml").is_file()
    else:
        assert (root / "options/train_hyresr_otf.toml").is_file()
    installed = {p for p in root.rglob("*") if p.is_file()} - before
    assert len(installed) == len(install.plan(host))

    arch_dest.write_text("# a user's edited copy\n")
    assert install.main(args) == 1, "overwrote a different file without --force"
    assert arch_dest.read_text() == "# a user's edited copy\n"
    assert "refusing" in capsys.readouterr().err

    un = build_parser().parse_args(["install", "--host", host, "--root", str(root), "--uninstall"])
    assert install.main(un) == 1  # the edited file is kept
    assert arch_dest.exists()
    force = build_parser().parse_args(["install", "--host", host, "--root", str(root), "--uninstall", "--force"])
    assert install.main(force) == 0
    assert {p for p in root.rglob("*")} == before, "uninstall left or removed something else"


def test_install_works_from_a_built_wheel_in_a_fresh_venv(tmp_path):
    """The arch file and option templates travel inside the wheel: no checkout needed."""
    import sysconfig

    from registry_hooks import neosr, traiNNer

    src = tmp_path / "src"  # build from a copy: nothing is written into this checkout
    for name in ("hyresr_arch", "registry_hooks", "options"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, src / name)
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    venv, dist = tmp_path / "venv", tmp_path / "dist"

    def run(*args):
        proc = subprocess.run([str(a) for a in args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=180)
        assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout

    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, src)
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "-q", *dist.glob("hyresr-*.whl"))
    # the venv borrows this environment's torch & co. (listed after its own site-packages, so its
    # own hyresr is the one imported)
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))").strip())
    (site / "outer.pth").write_text(sysconfig.get_path("purelib") + "\n")
    for mod in (traiNNer, neosr):
        root = _checkout(tmp_path / mod.HOST, mod.HOST)
        run(venv / "bin" / "hyresr", "install", "--host", mod.HOST, "--root", root)
        assert (root / mod.ARCH_DEST).read_bytes() == ARCH_FILE.read_bytes()
        templates = sorted((ROOT / mod.OPTIONS_SOURCE).iterdir())
        assert templates and all((root / mod.destination(t.name)).read_bytes() == t.read_bytes() for t in templates)
    used = run(python, "-c", "import hyresr_arch.install as i; print(i._template_folder('neosr'))").strip()
    assert Path(used).is_relative_to(site / "hyresr_arch"), used


def test_readme_templates_and_installer_agree_where_a_traiNNer_config_goes(tmp_path, capsys):
    from hyresr_arch import install
    from registry_hooks import traiNNer

    folder = traiNNer.TRAIN_OPTIONS_DEST + "/"  # traiNNer-redux: options/train/<ARCH>/
    readme_opts = re.findall(r"python train\.py[^\n]* -opt (\S+\.yml)", (ROOT / "README.md").read_text())
    assert readme_opts and all(o.startswith(folder) for o in readme_opts), readme_opts
    assert re.search(rf"cp \S+ {re.escape(folder)}", (ROOT / "README.md").read_text())
    for template in (ROOT / traiNNer.OPTIONS_SOURCE).glob("HyReSR_*.yml"):
        assert "test" in template.name or folder in template.read_text(), template.name
    assert install.install("traiNNer", _checkout(tmp_path, "traiNNer")) == 0
    assert f"-opt {folder}" in capsys.readouterr().out


def test_install_rejects_a_folder_that_is_not_the_host(tmp_path, capsys):
    from hyresr_arch import install
    from hyresr_arch.cli import build_parser

    _checkout(tmp_path, "traiNNer")
    args = build_parser().parse_args(["install", "--host", "neosr", "--root", str(tmp_path)])
    assert install.main(args) == 2
    assert "does not look like a neosr checkout" in capsys.readouterr().err
    assert not (tmp_path / "neosr").exists()


def test_the_pack_never_imports_registry_hooks():
    """registry_hooks/ (the hosts' entry points) depends on hyresr_arch, never the reverse."""
    import ast

    offenders = []
    for path in (ROOT / "hyresr_arch").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "registry_hooks"]
    assert offenders == []
