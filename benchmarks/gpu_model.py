"""A GPU cost model calibrated on published measurements (no GPU needed), and the table's protocol.

HyReSR has not run on a GPU yet. This module predicts where it would land in the field's GPU table,
traiNNer-redux's published inference benchmark (RTX 4090, 1x3x480x640 input, x4, AMP autocast in
fp16 or bf16, channels_last, torch.inference_mode; the numbers are committed in
``benchmarks/data/trainner_redux_4090.csv`` with their source), and runs that protocol on a real
GPU (``measure``, the first stage of ``benchmarks/gpu_check.sh``).

1. **Trace.** Each model's eval forward runs on fake CUDA tensors
   (``torch._subclasses.fake_tensor.FakeTensorMode``: shapes, dtypes and strides only, nothing is
   computed or allocated) under the table's autocast dtype, channels_last and inference_mode, with
   the device reported as the table's RTX 4090 (compute capability 8.9). A dispatch mode records
   every aten op that launches a kernel: FLOPs (``torch.utils.flop_counter``'s formulas plus the
   ops it misses: ``torch._grouped_mm`` and the SDPA variants), bytes read + written, its class
   (dense conv, grouped/depthwise conv, matmul, fused attention, memory-bound, host op, host <->
   device copy) and whether its channel dims are multiples of 8. ``scaled_dot_product_attention``
   is resolved to the kernel CUDA would pick (flash / memory-efficient / math, whose own matmuls
   and softmax are then recorded). Host syncs (``.item()``, blocking host -> device copies) split
   the forward into stretches. Live fake storages give the peak memory. The second of two forwards
   in one autocast context is recorded (the table times warm runs; under inference_mode autocast
   re-casts the weights every forward, and the trace shows it).
2. **Cost model**, per stretch between syncs: ``device = sum over kernels of max(FLOPs / P_class x
   (slowdown if unaligned), bytes / BW) + t_kernel``, ``host = dispatched aten ops x t_op + host
   bytes / BW_host``, ``time = sum over stretches of smooth max(device, host)`` (launches are
   asynchronous within a stretch). Eight parameters: ``P_conv``, ``P_dwconv``, ``P_mm``, ``BW``,
   ``t_kernel``, ``t_op``, ``BW_host``, ``unaligned``. Fused attention uses ``P_mm``: no calibration
   architecture calls SDPA (an assumption, stated in the report). VRAM: ``a x traced + b``.
3. **Fit** by least squares on log time (Levenberg-Marquardt, numpy only) to the published
   channels_last FPS of every table architecture spandrel builds with the table's configuration
   (parameter counts checked against the table), then leave-one-out error and Spearman rank
   correlation, then predictions for every HyReSR variant (built from ``hyresr_arch`` at run time,
   as built and fused). A median leave-one-out error above 1.5x is reported as "not reliable".

    python benchmarks/gpu_model.py fit --json out.json --markdown out.md   # CPU, about 5 minutes on 1 core
    python benchmarks/gpu_model.py measure --out DIR                       # the table's protocol (CUDA)
"""
from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import statistics
import sys
import time
import warnings
import weakref
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence
from unittest import mock

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import zoo  # noqa: E402

aten = torch.ops.aten
DATA_CSV = Path(__file__).resolve().parent / "data" / "trainner_redux_4090.csv"
INPUT_SHAPE = (1, 3, 480, 640)
SCALE = 4
TABLE_CAPABILITY = (8, 9)  # RTX 4090 (Ada)
RELIABLE_MEDIAN = 1.5  # the median leave-one-out error ratio above which predictions are called unreliable


# ==================================================================================================
# FLOP formulas torch.utils.flop_counter does not have (shapes in, FLOPs out; FlopCounterMode's
# custom_mapping convention: tensor arguments arrive as shapes, the output's shape as out_shape)
def grouped_mm_flops(a_shape, b_shape, offs_shape=None, bias_shape=None, out_dtype=None, *args,
                     out_shape=None, **kwargs) -> int:
    """``torch._grouped_mm(a, b, offs)``: a grouped GEMM. FLOPs do not depend on the group sizes:
    2D x 3D (rows of ``a`` split over the groups of ``b``: the MoE case): 2 * M * K * N;
    3D x 3D (batched): 2 * G * M * K * N; 2D x 2D (K split into groups, output G x M x N):
    2 * M * K * N; 3D x 2D (columns of ``b`` split over the groups of ``a``): 2 * M * K * N."""
    if len(a_shape) == 2 and len(b_shape) == 3:
        (m, k), n = a_shape, b_shape[2]
        return 2 * m * k * n
    if len(a_shape) == 3 and len(b_shape) == 3:
        g, m, k = a_shape
        return 2 * g * m * k * b_shape[2]
    if len(a_shape) == 2 and len(b_shape) == 2:
        return 2 * a_shape[0] * a_shape[1] * b_shape[1]
    if len(a_shape) == 3 and len(b_shape) == 2:
        return 2 * a_shape[1] * a_shape[2] * b_shape[1]
    raise ValueError(f"_grouped_mm shapes {a_shape} x {b_shape}")


def attention_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """Attention forward (QK^T and AV): 2 * B * H * L * S * (E + Ev); softmax not counted, as
    torch's own SDPA formulas. Heads of k/v may be fewer than q's (grouped-query attention)."""
    *bq, l_q, e = q_shape
    *_, s, _ = k_shape
    ev = v_shape[-1]
    return 2 * math.prod(bq) * l_q * s * (e + ev)


def extra_flop_mapping() -> dict:
    """custom_mapping for ``torch.utils.flop_counter.FlopCounterMode``: the ops its registry misses."""
    out: dict = {}
    if hasattr(aten, "_grouped_mm"):
        out[aten._grouped_mm] = grouped_mm_flops
    for name in ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_fused_attention_overrideable"):
        if hasattr(aten, name):
            out[getattr(aten, name)] = attention_flops
    return out


def flop_counter():
    """A FlopCounterMode that also counts ``_grouped_mm`` and the CPU / overrideable SDPA kernels."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping=extra_flop_mapping())


# ==================================================================================================
# Tracing on fake CUDA tensors
@dataclass
class Op:
    name: str
    cls: str  # conv | dwconv | mm | attn | mem (device kernels) | host (CPU op) | h2d (host <-> device copy)
    flops: float = 0.0
    bytes: float = 0.0
    launches: int = 1
    seg: int = 0  # index of the stretch between host synchronisations it belongs to
    aligned: bool = True  # conv / matmul: every channel (K, N) dimension a multiple of 8 (tensor-core friendly)


@dataclass
class Trace:
    model: str
    dtype: str
    ops: list[Op]
    seg_dispatched: list[int]  # aten ops the host dispatches (views included), per stretch between syncs
    params: int
    static_bytes: int  # parameters + buffers (as stored, fp32) + input
    start_bytes: int  # live fake storages when the recorded forward starts (cached casts, last output)
    peak_bytes: int  # peak of live fake storages during the recorded forward
    out_shape: tuple[int, ...] = ()
    sdpa: dict[str, int] = field(default_factory=dict)

    def total(self, key: str, cls: str | None = None) -> float:
        return sum(getattr(o, key) for o in self.ops if cls is None or o.cls == cls)

    @property
    def kernels(self) -> int:
        return sum(o.launches for o in self.ops)

    @property
    def dispatched(self) -> int:
        return sum(self.seg_dispatched)

    @property
    def syncs(self) -> int:
        """Host synchronisations in the forward (``.item()`` on a device tensor, blocking copies)."""
        return len(self.seg_dispatched) - 1

    @property
    def vram_bytes(self) -> int:
        """Traced analogue of the table's VRAM: weights + input + everything alive at the recorded
        forward's peak (autocast's cached casts and the previous output included)."""
        return self.static_bytes + self.peak_bytes

    def summary(self) -> dict:
        by = {}
        for c in ("conv", "dwconv", "mm", "attn", "mem", "host", "h2d"):
            by[c] = {"gflops": round(self.total("flops", c) / 1e9, 3), "gbytes": round(self.total("bytes", c) / 1e9, 4),
                     "kernels": sum(o.launches for o in self.ops if o.cls == c)}
        return {"model": self.model, "dtype": self.dtype, "params": self.params, "kernels": self.kernels,
                "dispatched": self.dispatched, "syncs": self.syncs, "gflops": round(self.total("flops") / 1e9, 3),
                "gbytes": round(self.total("bytes") / 1e9, 4), "vram_gb_traced": round(self.vram_bytes / 2**30, 4),
                "by_class": by, "sdpa": self.sdpa}


_META_OPS = {
    aten.empty.memory_format, aten.empty_strided.default, aten.empty_like.default, aten.new_empty.default,
    aten.new_empty_strided.default, aten.detach.default, aten.alias.default, aten.lift_fresh.default,
    aten._unsafe_view.default, aten.set_.source_Storage_storage_offset,
}
_QUERY_OPS = {
    "size", "sym_size", "stride", "sym_stride", "storage_offset", "sym_storage_offset", "numel", "sym_numel",
    "is_contiguous", "sym_is_contiguous", "is_strides_like_format", "is_non_overlapping_and_dense", "dim",
    "layout", "device", "is_same_size", "_has_compatible_shallow_copy_type",
}
_CONV = {"convolution", "_convolution", "cudnn_convolution", "convolution_overrideable", "_slow_conv2d_forward"}
_MM = {"mm", "addmm", "bmm", "baddbmm", "_grouped_mm", "_scaled_mm", "addbmm", "_addmm_activation"}
_SDPA = "scaled_dot_product_attention"
# ops eager CUDA runs as one kernel that the fake-tensor path decomposes into ~36 index / arithmetic
# ops (torch's python decomposition, for lack of a meta kernel): recorded as the one kernel
_ONE_KERNEL = {"upsample_bilinear2d", "upsample_nearest2d", "upsample_bicubic2d", "_upsample_bilinear2d_aa"}
_SDPA_KERNELS = {"_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                 "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
                 "_scaled_dot_product_fused_attention_overrideable", "_flash_attention_forward",
                 "_efficient_attention_forward"}


def _tensors(obj) -> list[torch.Tensor]:
    from torch.utils._pytree import tree_leaves

    return [t for t in tree_leaves(obj) if isinstance(t, torch.Tensor)]


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes a kernel touches in ``t``: broadcast (stride-0) dimensions count once."""
    if t.numel() == 0:
        return 0
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


def sdpa_backend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask, dropout_p: float = 0.0,
                 capability: tuple[int, int] = TABLE_CAPABILITY) -> str:
    """The kernel PyTorch's CUDA SDPA dispatcher picks, simplified to the conditions that matter for
    these models (torch 2.x, sm80+): flash for fp16/bf16 without a mask, head dim a multiple of 8
    and <= 256, q/k/v dims equal; memory-efficient for fp16/bf16/fp32 with head dims a multiple of
    8 (4 for fp32), mask allowed; else the math path (a materialised L x S matrix)."""
    e, ev = q.shape[-1], v.shape[-1]
    half = q.dtype in (torch.float16, torch.bfloat16)
    if q.device.type != "cuda":
        return "cpu"
    if half and attn_mask is None and e == ev and e % 8 == 0 and e <= 256 and capability >= (8, 0):
        return "flash"
    align = 8 if half else 4
    if e % align == 0 and ev % align == 0 and capability >= (5, 0):
        return "efficient"
    return "math"


class _CostMode(torch.utils._python_dispatch.TorchDispatchMode):
    """Records kernels (FLOPs, bytes, class) and live fake storage bytes."""

    def __init__(self, capability: tuple[int, int] = TABLE_CAPABILITY) -> None:
        super().__init__()
        from torch.utils.flop_counter import flop_registry, shape_wrapper

        self.capability = capability
        self.recording = False
        self.ops: list[Op] = []
        self.seg_dispatched = [0]
        self.sdpa: dict[str, int] = {}
        self.live = 0
        self.peak = 0
        self._seen: dict[int, Any] = {}
        extra = {k: shape_wrapper(v) for k, v in extra_flop_mapping().items()}
        self.formulas = {**flop_registry, **extra}

    # ---- live memory of fake CUDA storages
    def _track(self, out) -> None:
        for t in _tensors(out):
            if t.device.type != "cuda":
                continue
            st = t.untyped_storage()
            key = id(st)
            if key in self._seen and self._seen[key]() is st:
                continue
            nbytes = st.nbytes()
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            self._seen[key] = weakref.ref(st)
            weakref.finalize(st, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        self.live -= nbytes
        self._seen.pop(key, None)

    def reset_peak(self) -> None:
        self.peak = self.live

    # ---- recording
    def _add(self, op: Op) -> None:
        if self.recording:
            op.seg = len(self.seg_dispatched) - 1
            self.ops.append(op)

    def _count(self) -> None:
        if self.recording:
            self.seg_dispatched[-1] += 1

    def _sync(self) -> None:
        """The host waits for the device here: later work cannot overlap earlier work."""
        if self.recording:
            self.seg_dispatched.append(0)

    def _io_bytes(self, args, kwargs, out) -> float:
        seen: set[int] = set()
        total = 0
        for t in _tensors((args, kwargs)) + _tensors(out):
            key = id(t)
            if key not in seen:
                seen.add(key)
                total += tensor_bytes(t)
        return float(total)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._overloadpacket.__name__
        if name in _QUERY_OPS or func is torch.ops.prim.device.default:
            return func(*args, **kwargs)
        if name == _SDPA:
            return self._sdpa(func, args, kwargs)
        if name in _ONE_KERNEL:
            return self._one_kernel(func, name, args, kwargs)
        if name == "_local_scalar_dense":  # .item(): a device -> host copy and a sync; value unknown here
            self._count()
            if args[0].device.type == "cuda":
                self._sync()
            const = getattr(args[0], "constant", None)  # a fake tensor made from known values keeps them
            if const is not None:
                return const.item()
            dt = args[0].dtype
            return False if dt == torch.bool else (0.0 if dt.is_floating_point or dt.is_complex else 0)
        if (func._overloadpacket not in self.formulas and name not in _SDPA_KERNELS
                and torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd")):
            with self:
                r = func.decompose(*args, **kwargs)
            if r is not NotImplemented:
                return r
        out = func(*args, **kwargs)
        self._count()
        self._track(out)
        self._record(func, name, args, kwargs, out)
        return out

    def _record(self, func, name: str, args, kwargs, out) -> None:
        if not self.recording or func in _META_OPS:
            return
        ins = _tensors((args, kwargs))
        outs = _tensors(out)
        if not outs and not func._schema.is_mutable:
            return
        if func.is_view and all(any(o.untyped_storage() is i.untyped_storage() for i in ins) for o in outs):
            return  # a view: no kernel
        if ins and outs and not func._schema.is_mutable and all(
                any(o.untyped_storage() is i.untyped_storage() for i in ins) for o in outs):
            return  # returned an alias (e.g. .to() of the same dtype, contiguous() of a contiguous tensor)
        devices = {t.device.type for t in ins + outs}
        nbytes = self._io_bytes(args, kwargs, out)
        if devices == {"cpu"}:  # runs on the host (e.g. masks rebuilt per forward on the CPU)
            self._add(Op(name, "host", 0.0, nbytes, 0))
            return
        if len(devices) > 1 and name in ("_to_copy", "copy_", "_copy_from"):  # host <-> device copy
            self._add(Op(name, "h2d", 0.0, float(sum(tensor_bytes(t) for t in outs)), 1))
            non_blocking = kwargs.get("non_blocking", args[2] if name == "copy_" and len(args) > 2 else False)
            if not non_blocking:  # a blocking copy synchronises the stream (pageable host memory)
                self._sync()
            return
        flops = 0.0
        if func._overloadpacket in self.formulas:
            flops = float(self.formulas[func._overloadpacket](*args, **kwargs, out_val=out))
        if name in _CONV:
            groups = args[8] if len(args) > 8 else kwargs.get("groups", 1)
            x, w = args[0], args[1]
            launches = 1
            if (x.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last) and x.shape[1] > 1
                    and not x.is_contiguous(memory_format=torch.channels_last)):
                nbytes += 2 * tensor_bytes(x)  # cuDNN converts the input to the weight's layout first
                launches += 1
            aligned = groups > 1 or (w.shape[0] % 8 == 0 and w.shape[1] % 8 == 0)
            self._add(Op(name, "dwconv" if groups > 1 else "conv", flops, nbytes, launches, aligned=aligned))
        elif name in _MM:
            mats = [t for t in ins if t.dim() >= 2][-2:]  # the two matrices (addmm / baddbmm: after the bias)
            aligned = len(mats) < 2 or (mats[0].shape[-1] % 8 == 0 and mats[1].shape[-1] % 8 == 0)
            self._add(Op(name, "mm", flops, nbytes, aligned=aligned))
        elif name in _SDPA_KERNELS:
            self._add(Op(name, "attn", flops, nbytes))
        else:
            self._add(Op(name, "mem", flops, nbytes))

    def _one_kernel(self, func, name: str, args, kwargs):
        """Run ``func`` below this mode (however the fake path computes it, unrecorded); record it as
        one memory-bound kernel that reads its input and writes its output."""
        out = func(*args, **kwargs)
        self._count()
        self._track(out)
        self._add(Op(name, "mem", 0.0, self._io_bytes(args, kwargs, out)))
        return out

    def _sdpa(self, func, args, kwargs):
        q, k, v = args[:3]
        mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
        dropout = args[4] if len(args) > 4 else kwargs.get("dropout_p", 0.0)
        backend = sdpa_backend(q, k, v, mask, dropout, self.capability)
        if self.recording:
            self.sdpa[backend] = self.sdpa.get(backend, 0) + 1
        if backend == "math" or backend == "cpu":
            with self:  # record the math path's own kernels (matmuls, softmax, the L x S matrices)
                rest = {kk: vv for kk, vv in kwargs.items() if kk in ("attn_mask", "dropout_p", "is_causal", "scale",
                                                                         "enable_gqa")}
                pos = list(args[3:])
                names = ["attn_mask", "dropout_p", "is_causal"]
                for i, val in enumerate(pos[:3]):
                    rest[names[i]] = val
                rest.pop("enable_gqa", None)
                return aten._scaled_dot_product_attention_math(q, k, v, **rest)[0]
        out = func(*args, **kwargs)
        self._count()
        self._track(out)
        flops = float(attention_flops(tuple(q.shape), tuple(k.shape), tuple(v.shape)))
        nbytes = self._io_bytes((q, k, v, mask), {}, out)
        self._add(Op(f"sdpa_{backend}", "attn", flops, nbytes))
        return out


def to_fake_cuda(model: nn.Module, mode, channels_last: bool) -> nn.Module:
    """A copy of ``model`` whose parameters and buffers are fake CUDA tensors (nothing allocated),
    4D ones in channels_last when asked (what ``model.to("cuda", memory_format=...)`` does)."""
    model = copy.deepcopy(model)
    for mod in model.modules():
        for name, p in list(mod._parameters.items()):
            if p is None:
                continue
            fp = mode.from_tensor(p.detach())
            with mode:
                fp = fp.to("cuda")
                if channels_last and fp.dim() == 4:
                    fp = fp.contiguous(memory_format=torch.channels_last)
            mod._parameters[name] = nn.Parameter(fp, requires_grad=p.requires_grad)
        for name, b in list(mod._buffers.items()):
            if b is None:
                continue
            fb = mode.from_tensor(b)
            with mode:
                fb = fb.to("cuda")
                if channels_last and fb.dim() == 4:
                    fb = fb.contiguous(memory_format=torch.channels_last)
            mod._buffers[name] = fb
        for name, val in list(vars(mod).items()):  # plain tensor attributes (e.g. a mean kept outside buffers)
            if isinstance(val, torch.Tensor) and not isinstance(val, nn.Parameter):
                setattr(mod, name, mode.from_tensor(val))
    return model


@contextmanager
def fake_cuda_device(capability: tuple[int, int] = TABLE_CAPABILITY) -> Iterator[None]:
    """Let autocast and capability queries behave as on a CUDA device with this compute capability."""
    with ExitStack() as stack:
        stack.enter_context(mock.patch("torch.cuda.amp.common.amp_definitely_not_available", lambda: False))
        stack.enter_context(mock.patch("torch.cuda.is_bf16_supported", lambda *a, **k: True))
        stack.enter_context(mock.patch("torch.cuda.get_device_capability", lambda *a, **k: capability))
        yield


DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def trace(model: nn.Module, name: str = "", dtype: str = "fp16", shape: Sequence[int] = INPUT_SHAPE,
          channels_last: bool = True, capability: tuple[int, int] = TABLE_CAPABILITY) -> Trace:
    """Trace one eval forward the way the table runs it: fp32 model and input on CUDA, autocast in
    ``dtype`` (fp32: no autocast), channels_last, torch.inference_mode; the second of two forwards in
    the same autocast context is recorded."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    model = model.eval()
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    fake = FakeTensorMode(allow_non_fake_inputs=True)
    fmodel = to_fake_cuda(model, fake, channels_last)
    static = sum(tensor_bytes(t) for t in list(fmodel.parameters()) + list(fmodel.buffers()))
    cost = _CostMode(capability)
    amp = dtype != "fp32"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with fake_cuda_device(capability), fake, torch.inference_mode():
            x = torch.rand(*shape, device="cuda")
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            static += tensor_bytes(x)
            with torch.autocast("cuda", dtype=DTYPES[dtype], enabled=amp):
                with cost:
                    out = fmodel(x)  # warm-up: autocast caches its weight casts here
                    cost.reset_peak()
                    start = cost.live
                    cost.recording = True
                    out = fmodel(x)
                    cost.recording = False
    return Trace(name or type(model).__name__, dtype, cost.ops, list(cost.seg_dispatched), params, static, start,
                 cost.peak, tuple(out.shape), dict(cost.sdpa))


# ==================================================================================================
# Calibration architectures: the table's names built from spandrel with the configuration of
# traiNNer-redux's registered builder of that name (traiNNer/archs/*_arch.py at the table's commit).
# Parameter counts are checked against the table's (requires_grad parameters, as traiNNer counts).
@dataclass(frozen=True)
class TableArch:
    module: str  # spandrel.architectures.<module>
    cls: str
    kwargs: dict

    def build(self) -> nn.Module:
        return getattr(zoo._arch_module(self.module), self.cls)(**self.kwargs)


_SWIN_COMMON = dict(img_size=64, patch_size=1, in_chans=3, window_size=8, mlp_ratio=2.0, qkv_bias=True,
                    drop_path_rate=0.1, ape=False, patch_norm=True, img_range=1.0, upscale=SCALE)
_HAT_COMMON = dict(img_size=64, patch_size=1, in_chans=3, window_size=16, conv_scale=0.01, overlap_ratio=0.5,
                   mlp_ratio=2.0, qkv_bias=True, img_range=1.0, upsampler="pixelshuffle", resi_connection="1conv",
                   upscale=SCALE)
_DAT_COMMON = dict(in_chans=3, img_size=64, img_range=1.0, resi_connection="1conv", qkv_bias=True,
                   upsampler="pixelshuffle", upscale=SCALE)
_GRL_COMMON = dict(img_size=64, in_channels=3, out_channels=3, img_range=1.0, window_size=32, stripe_size=[64, 64],
                   stripe_groups=[None, None], stripe_shift=True, mlp_ratio=2.0, qkv_bias=True,
                   anchor_window_down_factor=4, upscale=SCALE)
_DRCT_COMMON = dict(in_chans=3, img_size=64, window_size=16, img_range=1.0, embed_dim=180, mlp_ratio=2.0,
                    upsampler="pixelshuffle", resi_connection="1conv", upscale=SCALE)
_RPLK = dict(dim=64, n_blocks=28, upscaling_factor=SCALE, kernel_size=17, split_ratio=0.25, use_ea=True, norm_groups=4)
_PLK = dict(dim=64, ccm_type="DCCM", split_ratio=0.25, lk_type="PLK", use_max_kernel=False,
            sparse_kernels=[5, 5, 5, 5], sparse_dilations=[1, 2, 3, 4], with_idt=False, upscaling_factor=SCALE)

TABLE_ARCHS: dict[str, TableArch] = {
    "superultracompact": TableArch("Compact.__arch.SRVGG", "SRVGGNetCompact",
                                   dict(num_in_ch=3, num_out_ch=3, num_feat=24, num_conv=8, upscale=SCALE,
                                        act_type="prelu")),
    "ultracompact": TableArch("Compact.__arch.SRVGG", "SRVGGNetCompact",
                              dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=8, upscale=SCALE, act_type="prelu")),
    "compact": TableArch("Compact.__arch.SRVGG", "SRVGGNetCompact",
                         dict(num_in_ch=3, num_out_ch=3, num_feat=64, num_conv=16, upscale=SCALE, act_type="prelu")),
    "span_s": TableArch("SPAN.__arch.span", "SPAN", dict(num_in_ch=3, num_out_ch=3, feature_channels=48, upscale=SCALE,
                                                          bias=True, norm=False)),
    "span": TableArch("SPAN.__arch.span", "SPAN", dict(num_in_ch=3, num_out_ch=3, feature_channels=52, upscale=SCALE,
                                                        bias=True, norm=False)),
    "mosr_t": TableArch("MoSR.__arch.mosr_arch", "MoSR", dict(upscale=SCALE, n_block=5, dim=48, upsampler="ps",
                                                               kernel_size=7, expansion_ratio=1.5, conv_ratio=1.0)),
    "mosr": TableArch("MoSR.__arch.mosr_arch", "MoSR", dict(upscale=SCALE, n_block=24, dim=64, upsampler="ps",
                                                             kernel_size=7, expansion_ratio=1.5, conv_ratio=1.0)),
    "realcugan": TableArch("RealCUGAN.__arch.upcunet_v3", "UpCunet4x", dict(in_channels=3, out_channels=3, pro=False)),
    "plksr_tiny": TableArch("PLKSR.__arch.PLKSR", "PLKSR", dict(_PLK, n_blocks=12, kernel_size=13, use_ea=False)),
    "plksr": TableArch("PLKSR.__arch.PLKSR", "PLKSR", dict(_PLK, n_blocks=28, kernel_size=17, use_ea=True)),
    "safmn": TableArch("SAFMN.__arch.safmn", "SAFMN", dict(dim=36, n_blocks=8, ffn_scale=2.0, upscaling_factor=SCALE)),
    "safmn_l": TableArch("SAFMN.__arch.safmn", "SAFMN", dict(dim=128, n_blocks=16, ffn_scale=2.0,
                                                              upscaling_factor=SCALE)),
    "seemore_t": TableArch("SeemoRe.__arch.seemore_arch", "SeemoRe",
                           dict(scale=SCALE, in_chans=3, num_experts=3, num_layers=6, embedding_dim=36, img_range=1.0,
                                use_shuffle=True, global_kernel_size=11, recursive=2, lr_space="exp", topk=1)),
    "ditn_real": TableArch("DITN.__arch.DITN_Real", "DITN_Real",
                           dict(inp_channels=3, dim=60, ITL_blocks=4, SAL_blocks=4, UFONE_blocks=1,
                                ffn_expansion_factor=2, bias=False, LayerNorm_type="WithBias", patch_size=8,
                                upscale=SCALE)),
    "realplksr_tiny": TableArch("PLKSR.__arch.RealPLKSR", "RealPLKSR",
                                dict(_RPLK, n_blocks=12, kernel_size=13, use_ea=False, layer_norm=True)),
    "realplksr pixelshuffle layer_norm=True": TableArch("PLKSR.__arch.RealPLKSR", "RealPLKSR",
                                                        dict(_RPLK, layer_norm=True)),
    "realplksr pixelshuffle layer_norm=False": TableArch("PLKSR.__arch.RealPLKSR", "RealPLKSR",
                                                         dict(_RPLK, layer_norm=False)),
    "realplksr dysample layer_norm=True": TableArch("PLKSR.__arch.RealPLKSR", "RealPLKSR",
                                                    dict(_RPLK, layer_norm=True, dysample=True)),
    "esrgan_lite": TableArch("ESRGAN.__arch.RRDB", "RRDBNet", dict(in_nc=3, out_nc=3, num_filters=32, num_blocks=12,
                                                                    scale=SCALE)),
    "esrgan use_pixel_unshuffle=True": TableArch("ESRGAN.__arch.RRDB", "RRDBNet",
                                                 dict(in_nc=3, out_nc=3, num_filters=64, num_blocks=23, scale=SCALE)),
    "omnisr": TableArch("OmniSR.__arch.OmniSR", "OmniSR", dict(num_in_ch=3, num_out_ch=3, num_feat=64, block_num=1,
                                                                pe=True, window_size=8, res_num=5, bias=True,
                                                                up_scale=SCALE)),
    "rcan": TableArch("RCAN.__arch.rcan_arch", "RCAN", dict(scale=SCALE, n_resgroups=10, n_resblocks=20, n_feats=64,
                                                             n_colors=3, rgb_range=255, norm=False, kernel_size=3,
                                                             reduction=16, res_scale=1, act_mode="relu")),
    "dctlsa": TableArch("DCTLSA.__arch.dctlsa", "DCTLSA", dict(in_nc=3, nf=55, num_modules=6, out_nc=3, upscale=SCALE,
                                                                num_head=5)),
    "craft": TableArch("CRAFT.__arch.CRAFT", "CRAFT", dict(in_chans=3, window_size=16, embed_dim=48, depths=[2] * 4,
                                                            num_heads=[6] * 4, split_size_0=4, split_size_1=16,
                                                            mlp_ratio=2.0, qkv_bias=True, upscale=SCALE, img_range=1.0,
                                                            resi_connection="1conv")),
    "moesr2": TableArch("MoESR.__arch.MoESR", "MoESR", dict(in_ch=3, out_ch=3, scale=SCALE, dim=64, n_blocks=9,
                                                            n_block=4, expansion_factor=8 / 3, expansion_msg=1.5,
                                                            upsampler="pixelshuffledirect", upsample_dim=64)),
    "swinir_s": TableArch("SwinIR.__arch.SwinIR", "SwinIR", dict(_SWIN_COMMON, embed_dim=60, depths=[6] * 4,
                                                                 num_heads=[6] * 4, upsampler="pixelshuffledirect",
                                                                 resi_connection="1conv")),
    "swinir_m": TableArch("SwinIR.__arch.SwinIR", "SwinIR", dict(_SWIN_COMMON, img_size=48, embed_dim=180,
                                                                 depths=[6] * 6, num_heads=[6] * 6,
                                                                 upsampler="pixelshuffle", resi_connection="1conv")),
    "swin2sr_s": TableArch("Swin2SR.__arch.Swin2SR", "Swin2SR", dict(_SWIN_COMMON, embed_dim=60, depths=[6] * 4,
                                                                     num_heads=[6] * 4, upsampler="pixelshuffledirect",
                                                                     resi_connection="1conv")),
    "swin2sr_m": TableArch("Swin2SR.__arch.Swin2SR", "Swin2SR", dict(_SWIN_COMMON, embed_dim=180, depths=[6] * 6,
                                                                     num_heads=[6] * 6, upsampler="pixelshuffle",
                                                                     resi_connection="1conv")),
    "hat_s": TableArch("HAT.__arch.HAT", "HAT", dict(_HAT_COMMON, embed_dim=144, depths=[6] * 6, num_heads=[6] * 6,
                                                     compress_ratio=24, squeeze_factor=24, num_feat=64)),
    "hat_m": TableArch("HAT.__arch.HAT", "HAT", dict(_HAT_COMMON, embed_dim=180, depths=[6] * 6, num_heads=[6] * 6,
                                                     compress_ratio=3, squeeze_factor=30, num_feat=64)),
    "dat_light": TableArch("DAT.__arch.DAT", "DAT", dict(_DAT_COMMON, split_size=[8, 32], depth=[18], embed_dim=60,
                                                         num_heads=[6], expansion_factor=2, resi_connection="3conv")),
    "dat_s": TableArch("DAT.__arch.DAT", "DAT", dict(_DAT_COMMON, split_size=[8, 16], depth=[6] * 6, embed_dim=180,
                                                     num_heads=[6] * 6, expansion_factor=2)),
    "dat_2": TableArch("DAT.__arch.DAT", "DAT", dict(_DAT_COMMON, split_size=[8, 32], depth=[6] * 6, embed_dim=180,
                                                     num_heads=[6] * 6, expansion_factor=2)),
    "atd_light": TableArch("ATD.__arch.atd_arch", "ATD", dict(in_chans=3, img_size=64, embed_dim=48, depths=[6] * 4,
                                                              num_heads=[6] * 4, window_size=16, category_size=128,
                                                              num_tokens=64, reducted_dim=8, convffn_kernel_size=7,
                                                              img_range=1.0, mlp_ratio=1,
                                                              upsampler="pixelshuffledirect", resi_connection="1conv",
                                                              upscale=SCALE)),
    "drct": TableArch("DRCT.__arch.drct_arch", "DRCT", dict(_DRCT_COMMON, depths=[6] * 6, num_heads=[6] * 6)),
    "grl_t": TableArch("GRL.__arch.grl", "GRL", dict(_GRL_COMMON, embed_dim=64, upsampler="pixelshuffledirect",
                                                     depths=[4] * 4, num_heads_window=[2] * 4,
                                                     num_heads_stripe=[2] * 4, local_connection=False)),
}


def load_published(path: Path = DATA_CSV) -> dict[str, dict]:
    """The committed table: key "name" or "name variant" (as traiNNer prints it) -> row (floats parsed)."""
    lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
    out = {}
    for row in csv.DictReader(lines):
        key = f"{row['name']} {row['variant']}".strip()
        for k in ("fps_base", "fps_cl", "vram_base_gb", "vram_cl_gb"):
            row[k] = float(row[k])
        row["scale"], row["params"] = int(row["scale"]), int(row["params"])
        out[key] = row
    return out


def source_of(path: Path = DATA_CSV) -> dict[str, str]:
    """Repository, file and commit named in the data file's header."""
    head = " ".join(ln[1:].strip() for ln in path.read_text().splitlines() if ln.startswith("#"))
    import re

    repo = re.search(r"github\.com/([\w.-]+/[\w.-]+)", head)
    file = re.search(r"file (\S+\.csv)", head)
    commit = re.search(r"commit ([0-9a-f]{40})", head)
    return {"repository": repo.group(1) if repo else "", "file": file.group(1) if file else "",
            "commit": commit.group(1) if commit else ""}


# ==================================================================================================
# The cost model
PARAM_NAMES = ("P_conv", "P_dwconv", "P_mm", "BW", "t_kernel", "t_op", "BW_host", "unaligned")
PARAM_UNITS = {"P_conv": 1e12, "P_dwconv": 1e12, "P_mm": 1e12, "BW": 1e9, "t_kernel": 1e-6, "t_op": 1e-6,
               "BW_host": 1e9, "unaligned": 1.0}
UNIT_NAMES = {"P_conv": "TFLOP/s", "P_dwconv": "TFLOP/s", "P_mm": "TFLOP/s", "BW": "GB/s", "t_kernel": "us",
              "t_op": "us", "BW_host": "GB/s", "unaligned": "x"}
# starting point and range of the fit (each parameter within 1000x of its start; the slowdown >= 1)
INITIAL = (80e12, 2e12, 60e12, 800e9, 4e-6, 8e-6, 10e9, 2.0)
_CLASS_INDEX = {"conv": 0, "dwconv": 1, "mm": 2, "attn": 2}  # fused attention runs at the matmul rate (assumed)


@dataclass
class Features:
    """What the cost model needs of one trace, as arrays (device kernels and host <-> device copies)."""

    flops: Any
    cls: Any  # 0 conv, 1 grouped/depthwise conv, 2 matmul / fused attention, -1 memory-bound
    bytes: Any
    unaligned: Any  # 1.0 for a conv / matmul with a channel dimension (K or N) not a multiple of 8
    launches: Any
    seg: Any  # stretch between host syncs each kernel belongs to
    seg_dispatched: Any  # aten ops the host dispatches, per stretch
    seg_host_bytes: Any  # bytes of host work (CPU ops, host <-> device copies), per stretch

    @classmethod
    def of(cls, tr: Trace) -> "Features":
        import numpy as np

        dev = [o for o in tr.ops if o.cls not in ("host", "h2d")]
        copies = [o for o in tr.ops if o.cls == "h2d"]
        host = np.zeros(len(tr.seg_dispatched))
        for o in tr.ops:
            if o.cls in ("host", "h2d"):
                host[o.seg] += o.bytes
        pad = [0.0] * len(copies)
        return cls(np.array([o.flops for o in dev] + pad, dtype=float),
                   np.array([_CLASS_INDEX.get(o.cls, -1) for o in dev] + [-1] * len(copies), dtype=int),
                   np.array([o.bytes for o in dev] + pad, dtype=float),
                   np.array([0.0 if o.aligned else 1.0 for o in dev] + pad, dtype=float),
                   np.array([o.launches for o in dev + copies], dtype=float),
                   np.array([o.seg for o in dev + copies], dtype=int),
                   np.array(tr.seg_dispatched, dtype=float), host)

    @classmethod
    def synthetic(cls, kernels: Sequence[tuple[str, float, float]], dispatched: float, host_bytes: float = 0.0,
                  unaligned: Sequence[bool] | None = None) -> "Features":
        """One stretch of (class, FLOPs, bytes) kernels: for tests and what-if questions."""
        import numpy as np

        n = len(kernels)
        return cls(np.array([k[1] for k in kernels], float), np.array([_CLASS_INDEX.get(k[0], -1) for k in kernels]),
                   np.array([k[2] for k in kernels], float),
                   np.array([float(u) for u in (unaligned or [False] * n)]), np.ones(n), np.zeros(n, dtype=int),
                   np.array([float(dispatched)]), np.array([float(host_bytes)]))


class _Stack:
    """Many Features concatenated, so one evaluation predicts every architecture at once."""

    def __init__(self, feats: Sequence[Features]) -> None:
        import numpy as np

        seg_offset = np.cumsum([0] + [len(f.seg_dispatched) for f in feats])
        self.n = len(feats)
        self.flops = np.concatenate([f.flops for f in feats])
        self.cls = np.concatenate([f.cls for f in feats])
        self.bytes = np.concatenate([f.bytes for f in feats])
        self.unaligned = np.concatenate([f.unaligned for f in feats])
        self.launches = np.concatenate([f.launches for f in feats])
        self.seg = np.concatenate([f.seg + o for f, o in zip(feats, seg_offset)])
        self.seg_arch = np.concatenate([np.full(len(f.seg_dispatched), i) for i, f in enumerate(feats)])
        self.seg_dispatched = np.concatenate([f.seg_dispatched for f in feats])
        self.seg_host_bytes = np.concatenate([f.seg_host_bytes for f in feats])

    def times(self, theta: Sequence[float]) -> Any:
        """Seconds per forward of each architecture. Within a stretch between host syncs the device
        runs while the host dispatches ahead (asynchronous launches): the slower of the two sets the
        pace (a smooth maximum); syncs make the stretches add up."""
        import numpy as np

        p_conv, p_dw, p_mm, bw, t_kernel, t_op, bw_host, slow = theta
        rate = np.array([p_conv, p_dw, p_mm])[np.clip(self.cls, 0, 2)]
        compute = np.where(self.cls >= 0, self.flops / rate, 0.0) * (1.0 + (slow - 1.0) * self.unaligned)
        per_kernel = np.maximum(compute, self.bytes / bw) + self.launches * t_kernel
        gpu = np.bincount(self.seg, weights=per_kernel, minlength=len(self.seg_dispatched))
        cpu = self.seg_dispatched * t_op + self.seg_host_bytes / bw_host
        return np.bincount(self.seg_arch, weights=(gpu ** 4 + cpu ** 4) ** 0.25, minlength=self.n)


def predict_parts(f: Features, theta: Sequence[float]) -> tuple[float, float]:
    """(device seconds, host seconds) of one forward, each summed over its stretches."""
    import numpy as np

    st = _Stack([f])
    gpu_only = list(theta)
    gpu_only[5], gpu_only[6] = 1e-30, 1e30  # no host time: the device part alone
    host_only = list(theta)
    host_only[0:3] = [1e30] * 3
    host_only[3], host_only[4] = 1e30, 0.0
    return float(np.sum(st.times(gpu_only))), float(np.sum(st.times(host_only)))


def predict_time(f: Features, theta: Sequence[float]) -> float:
    """Seconds per forward (see ``_Stack.times``)."""
    return float(_Stack([f]).times(theta)[0])


def levenberg_marquardt(resid: Callable[[Any], Any], x0: Any, lo: Any, hi: Any, iters: int = 300,
                        tol: float = 1e-10) -> tuple[Any, float]:
    """Minimise |resid(x)|^2 within the box [lo, hi] (numpy only; forward-difference Jacobian)."""
    import numpy as np

    x = np.clip(np.asarray(x0, float), lo, hi)
    r = resid(x)
    cost = float(r @ r)
    lam = 1e-3
    for _ in range(iters):
        jac = np.empty((len(r), len(x)))
        for j in range(len(x)):
            h = 1e-6 * max(1.0, abs(x[j]))
            xh = x.copy()
            xh[j] = xh[j] + h if xh[j] + h <= hi[j] else xh[j] - h
            jac[:, j] = (resid(xh) - r) / (xh[j] - x[j])
        g, hess = jac.T @ r, jac.T @ jac
        improved = False
        for _ in range(12):
            step = np.linalg.solve(hess + lam * (np.diag(np.diag(hess)) + 1e-12 * np.eye(len(x))), -g)
            xn = np.clip(x + step, lo, hi)
            rn = resid(xn)
            cn = float(rn @ rn)
            if cn < cost:
                improved = True
                done = cost - cn < tol * max(cost, 1e-30)
                x, r, cost, lam = xn, rn, cn, max(lam / 5, 1e-12)
                break
            lam *= 5
        if not improved or done:
            break
    return x, cost


def fit(feats: Sequence[Features], times: Sequence[float], init: Sequence[float] | None = None) -> list[float]:
    """Least squares on log(time) over log(parameters), from INITIAL (and two scaled copies of it)
    or from ``init``; each parameter kept within 1000x of INITIAL, the unaligned slowdown in [1, 50]."""
    import numpy as np

    x0 = np.log(np.array(INITIAL, dtype=float))
    lo, hi = x0 - math.log(1e3), x0 + math.log(1e3)
    lo[7], hi[7] = 0.0, math.log(50.0)
    stack = _Stack(feats)
    logt = np.log(np.asarray(times, dtype=float))

    def resid(z):
        return np.log(stack.times(np.exp(z))) - logt

    starts = [np.log(np.array(init, float))] if init is not None else [
        x0, x0 + np.log([4, 4, 4, 1, 1, 1, 1, 1]), x0 + np.log([0.25, 0.25, 0.25, 1, 1, 1, 1, 1])]
    best = min((levenberg_marquardt(resid, s0, lo, hi) for s0 in starts), key=lambda r: r[1])
    return [float(v) for v in np.exp(best[0])]


def fit_vram(traced_bytes: Sequence[float], published_bytes: Sequence[float]) -> tuple[float, float]:
    """published ~ a * traced + b (bytes), least squares on log values."""
    import numpy as np

    x, y = np.asarray(traced_bytes, float), np.asarray(published_bytes, float)

    def resid(z):
        a, b = np.exp(z)
        return np.log(a * x + b) - np.log(y)

    z, _ = levenberg_marquardt(resid, np.log([1.0, 1e8]), np.log([0.1, 1e5]), np.log([10.0, 1e10]))
    return float(np.exp(z[0])), float(np.exp(z[1]))


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    def ranks(v):
        order = sorted(range(len(v)), key=lambda i: v[i])
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(list(a)), ranks(list(b))
    ma, mb = statistics.fmean(ra), statistics.fmean(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    sa = math.sqrt(sum((x - ma) ** 2 for x in ra))
    sb = math.sqrt(sum((y - mb) ** 2 for y in rb))
    return cov / (sa * sb) if sa and sb else float("nan")


def error_ratio(pred: float, true: float) -> float:
    """max(pred/true, true/pred): 1.0 is exact, 2.0 is off by a factor of two either way."""
    return max(pred / true, true / pred)


@dataclass
class Calibration:
    names: list[str]
    traces: dict[str, Trace]
    fps: dict[str, float]  # published FPS (channels_last)
    vram_gb: dict[str, float]  # published VRAM (channels_last)
    theta: list[float]
    loo_theta: dict[str, list[float]]  # parameters fitted without that architecture
    loo_fps: dict[str, float]
    vram_ab: tuple[float, float]
    loo_vram: dict[str, float]
    skipped: dict[str, str]

    def stats(self) -> dict[str, Any]:
        err = {n: error_ratio(self.loo_fps[n], self.fps[n]) for n in self.names}
        verr = {n: error_ratio(self.loo_vram[n], self.vram_gb[n]) for n in self.names}
        fit_err = {n: error_ratio(fps_of(self.traces[n], self.theta), self.fps[n]) for n in self.names}
        return {"n": len(self.names),
                "loo_median_ratio": statistics.median(err.values()), "loo_worst_ratio": max(err.values()),
                "loo_worst_arch": max(err, key=err.get),
                "loo_spearman": spearman([self.loo_fps[n] for n in self.names], [self.fps[n] for n in self.names]),
                "fit_median_ratio": statistics.median(fit_err.values()), "fit_worst_ratio": max(fit_err.values()),
                "vram_loo_median_ratio": statistics.median(verr.values()), "vram_loo_worst_ratio": max(verr.values())}

    @property
    def reliable(self) -> bool:
        return self.stats()["loo_median_ratio"] <= RELIABLE_MEDIAN


def fps_of(tr: Trace, theta: Sequence[float]) -> float:
    return 1.0 / predict_time(Features.of(tr), theta)


def vram_of(tr: Trace, ab: tuple[float, float]) -> float:
    return (ab[0] * tr.vram_bytes + ab[1]) / 2**30


def trace_calibration(names: Sequence[str] | None = None, log: Callable[[str], None] = print,
                      check_params: bool = True) -> tuple[dict[str, Trace], dict[str, str]]:
    """Trace the calibration architectures (each checked against the table's parameter count)."""
    pub = load_published()
    traces: dict[str, Trace] = {}
    skipped: dict[str, str] = {}
    for n in names or TABLE_ARCHS:
        row = pub[n]
        t0 = time.time()
        try:
            torch.manual_seed(0)
            model = TABLE_ARCHS[n].build().eval()
            nparams = sum(p.numel() for p in model.parameters() if p.requires_grad)
            if check_params and nparams != row["params"]:
                skipped[n] = f"params {nparams:,} != published {row['params']:,}"
                log(f"  skip {n}: {skipped[n]}")
                continue
            traces[n] = trace(model, n, row["dtype"])
        except Exception as err:  # noqa: BLE001
            skipped[n] = f"{type(err).__name__}: {str(err)[:160]}"
            log(f"  skip {n}: {skipped[n]}")
            continue
        s = traces[n].summary()
        log(f"  traced {n:40s} {row['dtype']} {s['gflops']:8.1f} GFLOP {s['gbytes']:7.2f} GB {s['kernels']:5d} kernels "
            f"{s['syncs']:3d} syncs ({time.time() - t0:.1f} s)")
    return traces, skipped


def calibrate(traces: dict[str, Trace], skipped: dict[str, str] | None = None) -> Calibration:
    """Fit on every traced calibration architecture, then leave each out in turn."""
    pub = load_published()
    ok = list(traces)
    fps = {n: pub[n]["fps_cl"] for n in ok}
    vram = {n: pub[n]["vram_cl_gb"] for n in ok}
    feats = {n: Features.of(traces[n]) for n in ok}
    theta = fit([feats[n] for n in ok], [1 / fps[n] for n in ok])
    ab = fit_vram([traces[n].vram_bytes for n in ok], [vram[n] * 2**30 for n in ok])
    loo_theta, loo_fps, loo_vram = {}, {}, {}
    for n in ok:
        rest = [m for m in ok if m != n]
        loo_theta[n] = fit([feats[m] for m in rest], [1 / fps[m] for m in rest], init=theta)
        loo_fps[n] = 1 / predict_time(feats[n], loo_theta[n])
        ab_n = fit_vram([traces[m].vram_bytes for m in rest], [vram[m] * 2**30 for m in rest])
        loo_vram[n] = vram_of(traces[n], ab_n)
    return Calibration(ok, traces, fps, vram, theta, loo_theta, loo_fps, ab, loo_vram, dict(skipped or {}))


# ==================================================================================================
# HyReSR predictions
def hyresr_traces(variants: Sequence[str] | None = None, dtype: str = "fp16", fused_too: bool = True,
                  log: Callable[[str], None] = print) -> dict[str, Trace]:
    """Trace every HyReSR variant as built by ``hyresr_arch`` now (nothing about them is stored here):
    as built (what the table's protocol runs) and fused (what a deployed model runs)."""
    out = {}
    for v in variants or zoo.HYRESR_NAMES:
        torch.manual_seed(0)
        model = zoo.build_hyresr(v, SCALE).eval()
        forms = [(v, model)]
        if fused_too:
            forms.append((f"{v} (fused)", zoo.fuse_model(copy.deepcopy(model)).eval()))
        for name, m in forms:
            t0 = time.time()
            out[name] = trace(m, name, dtype)
            s = out[name].summary()
            log(f"  traced {name:40s} {dtype} {s['gflops']:8.1f} GFLOP {s['gbytes']:7.2f} GB {s['kernels']:5d} kernels "
                f"SDPA {s['sdpa']} ({time.time() - t0:.1f} s)")
    return out


PEER_KEYS = {  # the peers, by the table's names
    "span_s": "SPAN (feature_channels=48, the zoo's SPAN)",
    "safmn": "SAFMN",
    "realplksr pixelshuffle layer_norm=True": "RealPLKSR (traiNNer's default)",
    "realplksr pixelshuffle layer_norm=False": "RealPLKSR (spandrel's default, the zoo's)",
    "omnisr": "OmniSR",
    "swinir_s": "SwinIR-light",
}


def report(cal: Calibration, hy: dict[str, Trace], dtype: str) -> dict:
    st = cal.stats()
    pub = load_published()
    peers = {}
    for key, label in PEER_KEYS.items():
        peers[key] = {"label": label, "dtype": pub[key]["dtype"], "params": pub[key]["params"],
                      "published_fps": pub[key]["fps_cl"], "published_vram_gb": pub[key]["vram_cl_gb"],
                      "loo_fps": round(cal.loo_fps[key], 3) if key in cal.loo_fps else None}
    preds = {}
    for name, tr in hy.items():
        fps = fps_of(tr, cal.theta)
        spread = [fps_of(tr, th) for th in cal.loo_theta.values()]
        gpu, cpu = predict_parts(Features.of(tr), cal.theta)
        preds[name] = {"dtype": tr.dtype, "params": tr.params, "predicted_fps": round(fps, 3),
                       "loo_range_fps": [round(min(spread), 3), round(max(spread), 3)],
                       "band_fps": [round(fps / st["loo_median_ratio"], 3), round(fps * st["loo_median_ratio"], 3)],
                       "predicted_vram_gb": round(vram_of(tr, cal.vram_ab), 3),
                       "device_ms": round(gpu * 1e3, 2), "host_ms": round(cpu * 1e3, 2),
                       "x_span_s": round(fps / pub["span_s"]["fps_cl"], 3),
                       "x_safmn": round(fps / pub["safmn"]["fps_cl"], 3), "trace": tr.summary()}
    return {
        "source": source_of(),
        "protocol": f"1x3x{INPUT_SHAPE[2]}x{INPUT_SHAPE[3]} input, x{SCALE}, AMP autocast, channels_last, "
                    "torch.inference_mode, RTX 4090 (the table's FPS (CL) and VRAM (CL) columns)",
        "theta": {k: v / PARAM_UNITS[k] for k, v in zip(PARAM_NAMES, cal.theta)}, "theta_units": UNIT_NAMES,
        "vram_fit": {"a": cal.vram_ab[0], "b_gb": cal.vram_ab[1] / 2**30},
        "stats": st, "reliable": st["loo_median_ratio"] <= RELIABLE_MEDIAN,
        "calibration": [{"name": n, "dtype": cal.traces[n].dtype, "published_fps": cal.fps[n],
                         "fit_fps": round(fps_of(cal.traces[n], cal.theta), 3), "loo_fps": round(cal.loo_fps[n], 3),
                         "loo_ratio": round(error_ratio(cal.loo_fps[n], cal.fps[n]), 3),
                         "published_vram_gb": cal.vram_gb[n], "loo_vram_gb": round(cal.loo_vram[n], 3),
                         "trace": cal.traces[n].summary()} for n in cal.names],
        "skipped": cal.skipped, "peers": peers, "hyresr_dtype": dtype, "predictions": preds,
        "torch": torch.__version__,
    }


def markdown(rep: dict) -> str:
    st, th, src = rep["stats"], rep["theta"], rep["source"]
    lines = [
        f"Calibrated on {st['n']} architectures of traiNNer-redux's published RTX 4090 table "
        f"(`{src['repository']}`, `{src['file']}` at `{src['commit'][:8]}`): {rep['protocol']}; traced with "
        f"torch {rep['torch']}.",
        "",
        f"- fitted: P_conv {th['P_conv']:.0f} TFLOP/s, P_dwconv {th['P_dwconv']:.1f} TFLOP/s, P_mm {th['P_mm']:.0f} "
        f"TFLOP/s (also used for fused attention: no calibration architecture calls SDPA), unaligned-channel slowdown "
        f"{th['unaligned']:.2f}x, BW {th['BW']:.0f} GB/s, t_kernel {th['t_kernel']:.2f} us, host t_op "
        f"{th['t_op']:.1f} us per aten op, host BW {th['BW_host']:.0f} GB/s; "
        f"VRAM = {rep['vram_fit']['a']:.3f} x traced + {rep['vram_fit']['b_gb']:.3f} GiB",
        f"- in-sample error: median {st['fit_median_ratio']:.2f}x, worst {st['fit_worst_ratio']:.2f}x",
        f"- **leave-one-out error: median {st['loo_median_ratio']:.2f}x, worst {st['loo_worst_ratio']:.2f}x "
        f"({st['loo_worst_arch']}); Spearman rank correlation {st['loo_spearman']:.3f}**; VRAM leave-one-out: median "
        f"{st['vram_loo_median_ratio']:.2f}x, worst {st['vram_loo_worst_ratio']:.2f}x",
    ]
    if not rep["reliable"]:
        lines.append(f"- **The prediction is not reliable**: the median leave-one-out error is above "
                     f"{RELIABLE_MEDIAN}x.")
    lines += ["", "| calibration arch | dtype | published FPS | fitted | leave-one-out | LOO error | published VRAM GiB "
                  "| LOO VRAM GiB |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c in sorted(rep["calibration"], key=lambda c: -c["published_fps"]):
        lines.append(f"| {c['name']} | {c['dtype']} | {c['published_fps']:.2f} | {c['fit_fps']:.2f} | "
                     f"{c['loo_fps']:.2f} | {c['loo_ratio']:.2f}x | {c['published_vram_gb']:.2f} | "
                     f"{c['loo_vram_gb']:.2f} |")
    if rep["skipped"]:
        lines += ["", "Not used: " + "; ".join(f"{k} ({v})" for k, v in rep["skipped"].items())]
    lines += ["", f"**Predictions, not measurements** ({rep['hyresr_dtype']} autocast, channels_last, RTX 4090, the "
                  "table's protocol; 'as built' is what the protocol runs, 'fused' the deployed graph); band = "
                  "prediction / and x the median leave-one-out error; LOO range = the predictions of the "
                  f"{st['n']} leave-one-out fits:", "",
              "| HyReSR | params | predicted FPS | band | LOO range | predicted VRAM GiB | x SPAN (span_s) | x SAFMN "
              "| device / host ms | kernels | SDPA kernels |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for n, p in rep["predictions"].items():
        sd = ", ".join(f"{k} {v}" for k, v in p["trace"]["sdpa"].items()) or "-"
        lines.append(f"| {n} | {p['params']:,} | **{p['predicted_fps']:.1f}** | {p['band_fps'][0]:.1f}-"
                     f"{p['band_fps'][1]:.1f} | {p['loo_range_fps'][0]:.1f}-{p['loo_range_fps'][1]:.1f} | "
                     f"{p['predicted_vram_gb']:.2f} | {p['x_span_s']:.2f} | {p['x_safmn']:.2f} | "
                     f"{p['device_ms']:.0f} / {p['host_ms']:.0f} | {p['trace']['kernels']} | {sd} |")
    lines += ["", "| peer (published, RTX 4090) | table name | dtype | params | FPS (CL) | VRAM (CL) GiB | "
                  "its leave-one-out prediction |", "|---|---|---|---:|---:|---:|---:|"]
    for n, p in rep["peers"].items():
        pred = f"{p['loo_fps']:.2f}" if p["loo_fps"] is not None else "-"
        lines.append(f"| {p['label']} | {n} | {p['dtype']} | {p['params']:,} | {p['published_fps']:.2f} | "
                     f"{p['published_vram_gb']:.2f} | {pred} |")
    return "\n".join(lines) + "\n"


# ==================================================================================================
# The table's protocol on a real GPU (benchmarks/gpu_check.sh runs this first)
def _table_name(name: str, dtype: str) -> str:
    return f"{name} {SCALE}x {dtype}"


def measure_one(model: nn.Module, dtype: str, channels_last: bool, warmup: int = 5, runs: int | None = None,
                max_runs: int | None = None, shape: Sequence[int] = INPUT_SHAPE, device: str = "cuda") -> dict:
    """One row of the table's protocol: model and a random fp32 input on the device (channels_last or
    not), autocast in ``dtype``, torch.inference_mode, ``warmup`` runs, one probe run that picks the
    number of timed runs as the table's script does (500 under 1/24 s, 10 under 0.5 s, else 5;
    ``runs`` overrides, ``max_runs`` caps), mean time (CUDA events on CUDA), peak memory after a
    reset (weights included; CUDA only)."""
    cuda = device.startswith("cuda")
    fmt = torch.channels_last if channels_last else torch.preserve_format
    x = torch.rand(tuple(shape), device=device).to(memory_format=fmt)
    m = model.eval().to(device, memory_format=fmt)

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def timed() -> tuple[float, torch.Tensor]:  # milliseconds, output
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            y = m(x)
            end.record()
            torch.cuda.synchronize()
            return start.elapsed_time(end), y
        t = time.perf_counter()
        y = m(x)
        return (time.perf_counter() - t) * 1e3, y

    with torch.autocast(device.split(":")[0], dtype=DTYPES[dtype], enabled=dtype != "fp32"), torch.inference_mode():
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync()
        for _ in range(warmup):
            m(x)
            sync()
        probe_ms, _ = timed()
        n = runs or (500 if probe_ms < 1000 / 24 else 10 if probe_ms < 500 else 5)
        n = min(n, max_runs) if max_runs else n
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        sync()
        total, out = 0.0, None
        for _ in range(n):
            ms, out = timed()
            total += ms
    sec = total / n / 1e3
    vram = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    ok = out is not None and tuple(out.shape[-2:]) == (shape[2] * SCALE, shape[3] * SCALE)
    finite = bool(torch.isfinite(out.float()).all()) if out is not None else False
    return {"sec": sec, "fps": 1 / sec, "vram_gb": vram, "runs": n, "shape_ok": ok, "finite": finite}


def measure(names: Sequence[str], budget_s: float, runs: int | None = None, max_runs: int | None = 100,
            log: Callable[[str], None] = print, shape: Sequence[int] = INPUT_SHAPE, device: str = "cuda",
            warmup: int = 5) -> list[dict]:
    """Rows of the table (both memory formats) for ``names``: table names of TABLE_ARCHS, HyReSR
    variants ("hyresr_tiny"), their fused form ("hyresr_tiny (fused)") and bf16 runs ("hyresr_tiny
    bf16"; HyReSR runs fp16 by default, peers in the table's dtype). Starts no new model once
    ``budget_s`` has passed."""
    if device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True
    pub = load_published()
    rows, t0 = [], time.time()
    for name in names:
        if time.time() - t0 > budget_s:
            log(f"  {name}: skipped (time budget {budget_s:.0f} s spent)")
            rows.append({"name": name, "error": "skipped: time budget"})
            continue
        base, dtype = (name[:-len(" bf16")], "bf16") if name.endswith(" bf16") else (name, None)
        fused = base.endswith(" (fused)")
        arch = base[:-len(" (fused)")] if fused else base
        try:
            torch.manual_seed(0)
            if arch in TABLE_ARCHS:
                build = TABLE_ARCHS[arch].build
                dtype = dtype or pub[arch]["dtype"]
            else:
                def build(arch=arch, fused=fused):
                    m = zoo.build_hyresr(arch, SCALE).eval()
                    return zoo.fuse_model(m) if fused else m
                dtype = dtype or "fp16"
            res, params = {}, 0
            for cl in (True, False):  # channels_last first, as the table's script
                model = build()
                params = sum(p.numel() for p in model.parameters() if p.requires_grad)
                res[cl] = measure_one(model, dtype, cl, warmup, runs, max_runs, shape, device)
                del model
                if device.startswith("cuda"):
                    torch.cuda.empty_cache()
            row = {"name": name, "label": _table_name(base, dtype), "dtype": dtype, "params": params,
                   "fps_base": res[False]["fps"], "fps_cl": res[True]["fps"], "sec_base": res[False]["sec"],
                   "vram_cl_gb": res[True]["vram_gb"], "vram_base_gb": res[False]["vram_gb"],
                   "runs": res[True]["runs"], "ok": res[True]["shape_ok"] and res[True]["finite"],
                   "published_fps_cl_4090": pub[arch]["fps_cl"] if arch in pub else None}
            rows.append(row)
            log(f"  {row['label']:44s} FPS {row['fps_base']:8.2f}  FPS(CL) {row['fps_cl']:8.2f}  VRAM(CL) "
                f"{row['vram_cl_gb']:6.2f} GiB  runs {row['runs']}  ({time.time() - t0:.0f} s)")
        except Exception as err:  # noqa: BLE001
            rows.append({"name": name, "error": f"{type(err).__name__}: {str(err)[:200]}"})
            log(f"  {name}: failed: {rows[-1]['error']}")
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows


def measure_markdown(rows: list[dict], device: str) -> str:
    """The rows as the table prints them, plus FPS (CL) ratios to SPAN (span_s) and SAFMN measured in
    the same run, and the published RTX 4090 FPS (CL) of the peers."""
    by = {r["name"]: r for r in rows if "error" not in r}
    span, safmn = by.get("span_s"), by.get("safmn")
    lines = [f"{device}; (1, 3, {INPUT_SHAPE[2]}, {INPUT_SHAPE[3]}) input, x{SCALE}, AMP autocast, "
             "torch.inference_mode, cudnn.benchmark, 5 warm-up + 5/10/500 runs (the table's rule; runs of a row: "
             "its 'runs' in gpu_table.json)", "",
             "|Name|FPS|FPS (CL)|CL vs base|sec/img|VRAM (CL)|Params|x SPAN (CL)|x SAFMN (CL)|RTX 4090 published FPS (CL)|",
             "|:-|-:|-:|-:|-:|-:|-:|-:|-:|-:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"|{r['name']}|-|-|-|-|-|-|-|-|{r['error']}|")
            continue
        xs = f"{r['fps_cl'] / span['fps_cl']:.3f}" if span else "-"
        xf = f"{r['fps_cl'] / safmn['fps_cl']:.3f}" if safmn else "-"
        pubv = f"{r['published_fps_cl_4090']:.2f}" if r["published_fps_cl_4090"] else "-"
        flag = "" if r["ok"] else " (output shape or values wrong)"
        lines.append(f"|{r['label']}{flag}|{r['fps_base']:.2f}|{r['fps_cl']:.2f}|{r['fps_cl'] / r['fps_base']:.2f}x|"
                     f"{r['sec_base']:.4f}|{r['vram_cl_gb']:.2f} GB|{r['params']:,}|{xs}|{xf}|{pubv}|")
    return "\n".join(lines) + "\n"


DEFAULT_MEASURE = ["span_s", "safmn"] + list(zoo.HYRESR_NAMES) + [
    "realplksr pixelshuffle layer_norm=True", "realplksr pixelshuffle layer_norm=False", "omnisr", "swinir_s"] + [
    f"{v} (fused)" for v in zoo.HYRESR_NAMES] + [f"{v} bf16" for v in zoo.HYRESR_NAMES]


DOCS = Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md"
# the fitted cost model, committed with the docs it made, so that other reports (the ablation table)
# predict with the same parameters without fitting again
FIT = Path(__file__).resolve().parent / "data" / "gpu_cost_fit.json"


README = Path(__file__).resolve().parents[1] / "README.md"
README_BEGIN, README_END = "<!-- speed:begin (generated by benchmarks/gpu_model.py fit --update-docs) -->", "<!-- speed:end -->"


def readme_block(rep: dict) -> str:
    """The README's speed table: each variant's predicted FPS (fused, as deployed) beside the peers'."""
    pub = {k: v["published_fps"] for k, v in rep["peers"].items()}
    lines = [README_BEGIN, "",
             f"Predicted, not measured (no GPU has run HyReSR yet): RTX 4090, the table's protocol ({rep['protocol']}), "
             f"{rep['hyresr_dtype']} autocast, the fused model; the cost model's leave-one-out error on the table's "
             f"architectures is {rep['stats']['loo_median_ratio']:.2f}x (median). Published for comparison: SAFMN "
             f"{pub['safmn']:.1f}, SPAN (48 channels) {pub['span_s']:.1f}, RealPLKSR {pub['realplksr pixelshuffle layer_norm=True']:.1f}, "
             f"SwinIR-light {pub['swinir_s']:.2f} FPS.", "",
             "| variant | params | predicted FPS | band |", "|---|---:|---:|---|"]
    for name, p in rep["predictions"].items():
        if name.endswith("(fused)"):
            lo, hi = p["band_fps"]
            lines.append(f"| {name.removesuffix(' (fused)')} | {p['params']:,} | {p['predicted_fps']:.1f} | "
                         f"{lo:.1f}-{hi:.1f} |")
    return "\n".join([*lines, "", README_END])


def update_readme(rep: dict, path: Path = README) -> bool:
    text = path.read_text()
    if README_BEGIN not in text or README_END not in text:
        return False
    head, rest = text.split(README_BEGIN, 1)
    path.write_text(head + readme_block(rep) + rest.split(README_END, 1)[1])
    return True


def save_fit(rep: dict, path: Path = FIT) -> None:
    keep = ("source", "protocol", "theta", "theta_units", "stats", "reliable", "peers", "hyresr_dtype", "torch")
    predictions = {n: {k: v for k, v in p.items() if k != "trace"} for n, p in rep["predictions"].items()}
    path.write_text(json.dumps({**{k: rep[k] for k in keep}, "predictions": predictions}, indent=1) + "\n")


def load_fit(path: Path = FIT) -> tuple[list[float], dict]:
    """(theta in the cost model's internal units, the peers' published and leave-one-out FPS) of the saved fit."""
    fit = json.loads(path.read_text())
    return [fit["theta"][k] * PARAM_UNITS[k] for k in PARAM_NAMES], fit["peers"]


def predict_fps(model: nn.Module, theta: Sequence[float], dtype: str = "fp16") -> float:
    """The table's FPS predicted for ``model`` (deployed: fused) with the fitted parameters ``theta``."""
    return fps_of(trace(zoo.fuse_model(copy.deepcopy(model)).eval(), "", dtype), theta)
DOCS_HEADING = "### GPU cost model: fit, leave-one-out error, predicted RTX 4090 rows"


def update_docs(md: str, path: Path = DOCS) -> bool:
    """Replace the generated block of docs/BENCHMARKS.md (its heading up to the next heading) with
    ``md``, dated today. False when the heading is not there."""
    text = path.read_text()
    start = text.find(DOCS_HEADING)
    if start == -1:
        return False
    nxt = [i for i in (text.find("\n## ", start + 1), text.find("\n### ", start + 1)) if i != -1]
    end = min(nxt) + 1 if nxt else len(text)
    block = (f"{DOCS_HEADING} - CPU trace, {time.strftime('%Y-%m-%d')}\n\n"
             "<!-- generated by: python benchmarks/gpu_model.py fit --update-docs -->\n" + md)
    path.write_text(text[:start] + block + ("\n" if end < len(text) else "") + text[end:])
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    pf = sub.add_parser("fit", help="trace, fit, leave-one-out, predict HyReSR (default; CPU only)")
    pf.add_argument("--archs", default=None, help="comma list of calibration names (default: all in TABLE_ARCHS)")
    pf.add_argument("--variants", default=None, help="comma list of HyReSR variants (default: all)")
    pf.add_argument("--dtype", default="fp16", choices=("fp16", "bf16"), help="HyReSR's autocast dtype (default fp16)")
    pf.add_argument("--no-fused", action="store_true", help="predict the models as built only")
    pf.add_argument("--threads", type=int, default=1)
    pf.add_argument("--json", type=Path, default=None)
    pf.add_argument("--markdown", type=Path, default=None)
    pf.add_argument("--update-docs", action="store_true",
                    help=f"rewrite the generated block of docs/BENCHMARKS.md ('{DOCS_HEADING}')")
    pm = sub.add_parser("measure", help="the table's protocol on this machine's GPU")
    pm.add_argument("--models", default=",".join(DEFAULT_MEASURE),
                    help="comma list: table names (span_s, safmn, omnisr, swinir_s, 'realplksr pixelshuffle "
                         "layer_norm=True', ...), HyReSR variants, '<variant> (fused)', '<variant> bf16'")
    pm.add_argument("--budget-s", type=float, default=240.0, help="start no new model after this many seconds")
    pm.add_argument("--runs", type=int, default=None, help="timed runs (default: the table's 5/10/500 rule)")
    pm.add_argument("--max-runs", type=int, default=100,
                    help="cap on the table's rule (default 100: the mean of 100 runs of a fast model is as stable "
                         "as of 500, and the check stays short); 0: no cap")
    pm.add_argument("--out", type=Path, default=None, help="folder for gpu_table.md / gpu_table.json")
    args = p.parse_args(argv if argv is not None else (sys.argv[1:] or ["fit"]))
    t0 = time.time()
    if args.cmd == "measure":
        if not torch.cuda.is_available():
            print("measure needs CUDA", file=sys.stderr)
            return 2
        device = f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}"
        print(f"the table's protocol on {device}")
        rows = measure([n.strip() for n in args.models.split(",") if n.strip()], args.budget_s, args.runs,
                       args.max_runs or None)
        md = measure_markdown(rows, device)
        print(md)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "gpu_table.md").write_text(md)
            (args.out / "gpu_table.json").write_text(json.dumps({"device": device, "rows": rows}, indent=1))
        print(f"done in {time.time() - t0:.0f} s")
        return 0
    torch.set_num_threads(args.threads)
    print("tracing the calibration architectures (fake CUDA, 1x3x480x640 x4)")
    traces, skipped = trace_calibration(args.archs.split(",") if args.archs else None)
    cal = calibrate(traces, skipped)
    print("tracing HyReSR")
    hy = hyresr_traces(args.variants.split(",") if args.variants else None, args.dtype, not args.no_fused)
    rep = report(cal, hy, args.dtype)
    md = markdown(rep)
    print()
    print(md)
    if not rep["reliable"]:
        print(f"WARNING: the median leave-one-out error {rep['stats']['loo_median_ratio']:.2f}x is above "
              f"{RELIABLE_MEDIAN}x: the prediction is not reliable")
    if args.json:
        args.json.write_text(json.dumps(rep, indent=1))
    if args.markdown:
        args.markdown.write_text(md)
    if args.update_docs:
        print("docs/BENCHMARKS.md updated" if update_docs(md) else f"'{DOCS_HEADING}' not found in {DOCS}")
        save_fit(rep)
        print(f"fit saved in {FIT}; README speed table " + ("updated" if update_readme(rep) else "markers not found"))
    print(f"done in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
