"""How GPU-shaped a forward is, measured on any machine: aten ops per forward (each one a kernel
launch or at least a dispatch on a GPU), host syncs (ops that make the CPU wait for the device's
answer: nonzero, item, ...), and CPU latency as a ratio to a peer timed in the same run, at 1 and
2 threads. Optionally the peak activation memory of one forward, and the same rows for the network
of an older git revision (``--rev``) to show before/after in one run.

    python benchmarks/kernels.py                                  # 64x64 x4, fused eval, all variants + peers
    python benchmarks/kernels.py --rev 2c8c1d7 --memory hyresr_rest:512:1
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import efficiency  # noqa: E402
import zoo  # noqa: E402

# ops that copy a device value to the host (or need its value there to size their output)
HOST_SYNC_OPS = frozenset({
    "aten.nonzero", "aten.nonzero_static", "aten._local_scalar_dense", "aten.item", "aten.is_nonzero",
    "aten.equal", "aten.masked_select", "aten.unique", "aten._unique", "aten._unique2", "aten.unique_dim",
    "aten.unique_consecutive", "aten.bincount", "aten.repeat_interleave", "aten.histc", "aten.tolist",
})
PEERS = ("SAFMN", "SPAN", "RealPLKSR", "SwinIR-light")
VARIANTS = ("hyresr_tiny", "hyresr_light", "hyresr")


class OpCounter(TorchDispatchMode):
    """Counts every aten op dispatched (views included: each costs a dispatch, most a launch)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def host_syncs(self) -> int:
        return sum(n for op, n in self.ops.items() if op in HOST_SYNC_OPS)


def count_forward(model, x: torch.Tensor) -> OpCounter:
    with torch.no_grad(), OpCounter() as counter:
        model(x)
    return counter


def count_training_step(model: torch.nn.Module, x: torch.Tensor) -> OpCounter:
    """A training forward and backward (an L1 loss against zeros)."""
    with OpCounter() as counter:
        model(x).abs().mean().backward()
    return counter


def sparse_moe(moe, t: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """The same top-1 MoE as ``TokenMoE.forward``, dispatched sparsely (format 1's way): per expert,
    gather its tokens (``nonzero``: one host sync each), run them, scatter back."""
    logits = torch.nn.functional.linear(t.float(), moe.router.weight.float(), moe.router.bias.float())
    choice = (logits + moe.route_bias.float()).argmax(dim=-1)
    gate = logits.softmax(dim=-1).gather(1, choice[:, None]).to(t.dtype)
    out = residual.clone()
    h = moe.hidden
    for e in range(moe.experts):
        idx = (choice == e).nonzero().flatten()
        x = t.index_select(0, idx)
        a, v = torch.nn.functional.linear(x, moe.fc1.weight[2 * h * e : 2 * h * (e + 1)],
                                          moe.fc1.bias[2 * h * e : 2 * h * (e + 1)]).chunk(2, dim=-1)
        y = torch.nn.functional.linear(torch.nn.functional.gelu(a) * v, moe.fc2.weight[:, h * e : h * (e + 1)],
                                       moe.fc2_bias[e])
        out = out.index_add(0, idx, y * gate.index_select(0, idx))
    return out


def count_paths(models: dict[str, torch.nn.Module], x: torch.Tensor, old=None) -> tuple[dict, dict]:
    """Op counts of each model on this machine's path (CPU: grouped MoE) and on the path CUDA takes in
    fp32, compiled and traced graphs (dense MoE), for this revision's network and ``old``'s alike."""
    here = {n: count_forward(m, x) for n, m in models.items()}
    moes = [mod.TokenMoE for mod in (zoo.hyresr_module(), old) if mod is not None and hasattr(mod.TokenMoE, "dispatch")]
    for moe in moes:
        moe.dispatch = "dense"
    try:
        dense = {n: count_forward(m, x) for n, m in models.items()}
    finally:
        for moe in moes:
            moe.dispatch = "auto"
    return here, dense


def compare_moe(threads: list[int], repeats: int) -> None:
    """The MoE's two sync-free forms (grouped GEMM, dense one-hot) against sparse per-expert
    dispatch (format 1, one host sync per expert), per variant's MoE shapes, at the token counts
    of a 64x64 and a 256x256 full-resolution stage. Times are ratios to the sparse dispatch."""
    hy = zoo.hyresr_module()
    print("\nTokenMoE alone, eval, same output in all three forms; time ratios to sparse dispatch\n")
    print("| variant | experts x hidden, dim | tokens | ops grouped / dense / sparse | syncs | "
          + " | ".join(f"grouped, {t} thr | dense, {t} thr" for t in threads) + " |")
    print("|---|---|---|---|---|" + "---|---|" * len(threads))
    for name in VARIANTS:
        moe = next(m for m in hy.BUILDERS[name](scale=4).modules() if isinstance(m, hy.TokenMoE)).eval()
        with torch.no_grad():
            moe.route_bias.copy_(torch.linspace(-0.3, 0.3, moe.experts))  # every expert gets tokens
        dim = moe.router.in_features

        def form(dispatch, m=moe):
            def run(x):
                m.dispatch = dispatch
                return m(x, x)
            return run

        forms = {"grouped": form("grouped"), "dense": form("dense"), "sparse": lambda x, m=moe: sparse_moe(m, x, x)}
        for side in (64, 256):
            t = torch.randn(side * side, dim)
            with torch.no_grad():
                outs = {k: f(t) for k, f in forms.items()}
            assert all(torch.allclose(o, outs["sparse"], atol=1e-4) for o in outs.values())
            c = {k: count_forward(f, t) for k, f in forms.items()}
            row = (f"| {name} | {moe.experts} x {moe.hidden}, {dim} | {side}x{side} | "
                   f"{c['grouped'].total} / {c['dense'].total} / {c['sparse'].total} | "
                   f"{c['grouped'].host_syncs} / {c['dense'].host_syncs} / {c['sparse'].host_syncs} |")
            for th in threads:
                torch.set_num_threads(th)
                times = efficiency.time_interleaved(forms, t, repeats=repeats, warmup=2, device="cpu")
                row += "".join(f" {efficiency.paired_ratio(times[k], times['sparse']):.2f} |" for k in ("grouped", "dense"))
            print(row)
        moe.dispatch = "auto"


def arch_from_rev(rev: str):
    """The hyresr_arch.py of an older git revision, imported as its own module."""
    src = subprocess.run(["git", "show", f"{rev}:hyresr_arch/hyresr_arch.py"], cwd=zoo.REPO, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / f"hyresr_arch_{rev.replace('/', '_')}.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(name: str, scale: int, old=None) -> torch.nn.Module:
    if old is not None:
        model = old.BUILDERS[name](scale=scale)
    else:
        model = zoo.build(name, scale)
    return efficiency.deploy_peer(zoo.fuse_model(model).eval())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=64, help="input height and width (default 64)")
    p.add_argument("--scale", type=int, default=4)
    p.add_argument("--models", default=",".join(VARIANTS + PEERS), help="comma-separated names")
    p.add_argument("--ref", default="SAFMN", help="the peer latency ratios are taken against")
    p.add_argument("--threads", default="1,2", help="thread counts to time at (default 1,2)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--rev", default=None, help="also measure the HyReSR variants of this git revision")
    p.add_argument("--memory", default=None, metavar="VARIANT:SIZE:SCALE",
                   help="peak activation memory of one eval forward, e.g. hyresr_rest:512:1")
    p.add_argument("--moe", action="store_true", help="also compare the dense MoE with sparse dispatch")
    args = p.parse_args(argv)

    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if args.ref not in names:
        names.append(args.ref)
    old = arch_from_rev(args.rev) if args.rev else None
    models = {n: build(n, args.scale) for n in names}
    if old is not None:
        models.update({f"{n}@{args.rev}": build(n, args.scale, old) for n in names if n.startswith("hyresr")})
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))

    counts, dense = count_paths(models, x, old)
    threads = [int(t) for t in args.threads.split(",")]
    ratios: dict[int, dict[str, float]] = {}
    for t in threads:
        torch.set_num_threads(t)
        times = efficiency.time_interleaved(models, x, repeats=args.repeats, warmup=2, device="cpu")
        ratios[t] = {n: efficiency.paired_ratio(times[n], times[args.ref]) for n in models}
        print(f"[kernels] timed at {t} thread(s)", file=sys.stderr)

    print(f"\n{args.size}x{args.size} -> x{args.scale}, fused eval forward, batch 1, CPU fp32 "
          f"({efficiency.zoo.machine_info('cpu')})\n")
    print("| model | aten ops, CUDA fp32 path | aten ops, CPU path | host syncs | "
          + " | ".join(f"latency / {args.ref}, {t} thr" for t in threads) + " |")
    print("|---|---|---|---|" + "---|" * len(threads))
    for n in models:
        c, d = counts[n], dense[n]
        print(f"| {n} | {d.total} | {c.total} | {max(c.host_syncs, d.host_syncs)} | "
              + " | ".join(f"{ratios[t][n]:.2f}" for t in threads) + " |")

    if args.memory:
        variant, size, scale = args.memory.split(":")
        xm = torch.rand(1, 3, int(size), int(size))
        torch.set_num_threads(max(threads))
        rows = [(variant, build(variant, int(scale)))]
        if old is not None:
            rows.append((f"{variant}@{args.rev}", build(variant, int(scale), old)))
        print(f"\npeak activation memory of one eval forward, {size}x{size} x{scale}:\n")
        for n, m in rows:
            print(f"- {n}: {efficiency.peak_memory_mb(m, xm):.0f} MiB")
    if args.moe:
        compare_moe(threads, args.repeats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
