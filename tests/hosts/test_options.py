"""Every option file in options/ parses and carries the keys its host needs.

- BasicSR: each file goes through BasicSR 1.4.2's own ``parse_options`` and its network is built
  from BasicSR's ARCH_REGISTRY.
- neosr: TOML (tomllib) with the keys neosr's ``train.py`` / ``neosr/utils/options.py`` /
  ``neosr/models/image.py`` index directly (read at neosr master 31c7022).
- traiNNer-redux: strict key check against its msgspec schema (no traiNNer import in CI); the
  field names below were read from ``traiNNer/utils/redux_options.py`` at traiNNer-redux
  master 686293190aca3e432a42b6155dbc94ea51c4bf9f (``ReduxOptions``, ``TrainOptions``,
  ``ValOptions``, ``LogOptions``, ``PathOptions``, ``DatasetOptions``, all ``forbid_unknown_fields``).
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from unittest import mock

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OPTIONS = ROOT / "options"
BASICSR_FILES = sorted((OPTIONS / "basicsr").glob("*.yml"))
NEOSR_FILES = sorted((OPTIONS / "neosr").glob("*.toml"))
TRAINNER_FILES = sorted((OPTIONS / "traiNNer").glob("*.yml"))

BUILDER_NAMES = {"hyresr_tiny", "hyresr_light", "hyresr", "hyresr_sr", "hyresr_rest"}


def patch_multiple(network_g: dict) -> int:
    """The LR patch multiple at which no stage pads or masks a window: the variant's window times
    its lowest level's downsampling (32 for hyresr_light, 24 for hyresr_tiny's 6x6 windows, 128
    for the five-level hyresr_rest)."""
    from hyresr_arch import BUILDERS

    hp = {**BUILDERS[network_g["type"]].__kwdefaults__, **network_g}
    return hp["window"] * 2 ** (len(hp["dims"]) - 1)


def _is_gan(path: Path) -> bool:
    return any(k in path.stem.lower() for k in ("gan", "otf"))


def test_every_host_has_the_required_option_files():
    def stems(files):
        return {f.stem for f in files}

    for files, host in ((BASICSR_FILES, "basicsr"), (NEOSR_FILES, "neosr"), (TRAINNER_FILES, "traiNNer")):
        names = " ".join(stems(files)).lower()
        for needed in ("tiny_x4", "light_x2", "light_x4", "hyresr_x2", "hyresr_x4", "x1", "test"):
            assert needed in names, f"{host}: no option file for {needed}"
        assert any(_is_gan(f) for f in files), f"{host}: no GAN / OTF option file"


@pytest.mark.parametrize("path", BASICSR_FILES + NEOSR_FILES + TRAINNER_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_option_file_parses_and_says_what_it_trains(path):
    text = path.read_text()
    data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    assert isinstance(data, dict) and data["name"]
    first_comment = next(line for line in text.splitlines() if line.startswith("#") and "yaml-language-server" not in line)
    assert len(first_comment) > 20, "each file starts with a comment saying what it trains"
    net = data["network_g"]
    assert net["type"] in BUILDER_NAMES
    # noise injection only in the GAN / OTF files
    assert bool(net.get("noise", False)) == _is_gan(path), "noise must be on exactly in the GAN files"


# -- BasicSR ----------------------------------------------------------------------------------------

def _basicsr():
    from registry_hooks import basicsr as hook

    hook.prepare()
    import basicsr.utils.options

    return basicsr.utils.options


@pytest.mark.parametrize("path", BASICSR_FILES, ids=lambda p: p.name)
def test_basicsr_option_file_passes_basicsr_parse_options(path, tmp_path):
    options = _basicsr()
    from basicsr.archs import build_network

    is_test = path.name.startswith("test")
    with mock.patch.object(sys, "argv", ["train.py", "-opt", str(path)]):
        opt, _ = options.parse_options(str(tmp_path), is_train=not is_test)
    assert opt["model_type"] in {"SRModel", "RealESRGANModel"}
    assert opt["network_g"]["upscale"] == opt["scale"]
    for phase, ds in opt["datasets"].items():
        assert ds["scale"] == opt["scale"] and ds["io_backend"]["type"] == "disk"
        if phase == "train":
            multiple = patch_multiple(opt["network_g"])
            assert ds["gt_size"] % (multiple * opt["scale"]) == 0, f"LR patch must be a multiple of {multiple}"
    if not is_test:
        assert opt["train"]["ema_decay"] > 0
        assert opt["train"]["optim_g"]["type"] == "Adam"  # the only optimizer BasicSR 1.4.2 builds
        assert opt["train"]["scheduler"]["type"] in {"CosineAnnealingRestartLR", "MultiStepLR"}
    if opt["model_type"] == "RealESRGANModel":
        from basicsr.models import MODEL_REGISTRY
        from basicsr.data import DATASET_REGISTRY

        MODEL_REGISTRY.get("RealESRGANModel")  # PyPI 1.4.2 registers it as RealESRGANModel_basicsr
        DATASET_REGISTRY.get(opt["datasets"]["train"]["type"])
        assert opt["network_d"]["type"] == "UNetDiscriminatorSN"
    # the network is built from BasicSR's ARCH_REGISTRY exactly as SRModel does (no forward: fast)
    net = build_network(dict(opt["network_g"]))
    assert net.scale == opt["scale"]


# -- neosr --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", NEOSR_FILES, ids=lambda p: p.name)
def test_neosr_toml_has_neosrs_required_keys(path):
    import hyresr_arch

    opt = tomllib.loads(path.read_text())
    for key in ("name", "model_type", "scale", "datasets", "network_g", "path"):
        assert key in opt, f"neosr needs top-level '{key}'"
    assert opt["model_type"] in {"image", "otf"}
    assert opt["scale"] in (1, 2, 3, 4, 8)
    for name, ds in opt["datasets"].items():
        assert "type" in ds
        if ds["type"] == "paired":
            assert {"dataroot_gt", "dataroot_lq"} <= ds.keys()
        if ds["type"] == "single":
            assert "dataroot_lq" in ds
    net_kwargs = {k: v for k, v in opt["network_g"].items() if k != "type"}
    if path.name.startswith("test"):
        assert "pretrain_network_g" in opt["path"] and "val" in opt
    else:
        train = opt["datasets"]["train"]
        assert {"dataroot_gt", "patch_size", "batch_size"} <= train.keys()
        assert train["patch_size"] % patch_multiple(opt["network_g"]) == 0
        assert opt["logger"]["total_iter"] > 0 and opt["logger"]["save_checkpoint_freq"] > 0
        assert opt["train"]["ema"] > 0 and "optim_g" in opt["train"]
        assert opt["use_amp"] is True and opt["bfloat16"] is True
        if opt["model_type"] == "otf":
            assert train["type"] == "otf" and "degradations" in opt  # train.py merges [degradations]
        if "network_d" in opt:
            assert "optim_d" in opt["train"] and "gan_opt" in opt["train"]
        assert opt["val"]["val_freq"] > 0
    # neosr builds ARCH_REGISTRY.get(type)(**network_g_without_type); scale comes from net_opt(),
    # here passed explicitly
    net = hyresr_arch.BUILDERS[opt["network_g"]["type"]](scale=opt["scale"], **net_kwargs)
    assert net.scale == opt["scale"]


# -- traiNNer-redux ----------------------------------------------------------------------------------

# (field names, required fields) of traiNNer-redux's msgspec structs, commit 6862931 (see module doc)
TRAINNER_SCHEMA = {
    "top": ({
        "amp_bf16", "auto_resume", "blur_prob", "blur_prob2", "compile_mode", "contents", "dataroot_lq_prob",
        "datasets", "detect_anomaly", "deterministic", "dist", "dist_params", "fast_matmul",
        "find_unused_parameters", "gaussian_noise_prob", "gaussian_noise_prob2", "gray_noise_prob",
        "gray_noise_prob2", "high_order_degradation", "high_order_degradations_debug",
        "high_order_degradations_debug_limit", "input_pixel_format", "is_train", "jpeg_prob", "jpeg_prob2",
        "jpeg_range", "jpeg_range2", "launcher", "logger", "lq_usm", "lq_usm_radius_range", "manual_seed", "name",
        "network_ae", "network_d", "network_g", "network_g_teacher", "noise_range", "noise_range2", "num_gpu",
        "onnx", "output_pixel_format", "path", "poisson_scale_range", "poisson_scale_range2", "queue_size", "rank",
        "resize_mode_list", "resize_mode_list2", "resize_mode_list3", "resize_mode_prob", "resize_mode_prob2",
        "resize_mode_prob3", "resize_prob", "resize_prob2", "resize_range", "resize_range2", "root_path", "scale",
        "start_iter", "switch_iter_per_epoch", "thicklines_prob", "train", "use_amp", "use_channels_last",
        "use_compile", "val", "watch", "world_size"},
        {"name", "num_gpu", "path", "scale"}),
    "train": ({
        "adaptive_d", "adaptive_d_ema_decay", "adaptive_d_threshold", "avg_opt", "bicubic_opt", "color_opt",
        "contextual_opt", "dinov2_opt", "dists_opt", "eco", "ema_decay", "ema_power", "ema_switch_iter",
        "ema_update_after_step", "fd_opt", "gan_opt", "grad_clip", "grad_clip_max_norm", "hr_inversion_opt",
        "hsluv_opt", "ldl_opt", "losses", "luma_opt", "moa_augs", "moa_debug", "moa_debug_limit", "moa_probs",
        "ms_ssim_l1_opt", "mssim_opt", "optim_ae", "optim_d", "optim_g", "pd_opt", "perceptual_opt", "pixel_opt",
        "restart_scheduler", "scheduler", "topiq_opt", "total_iter", "use_moa", "warmup_iter"},
        {"total_iter"}),
    "val": ({"metrics", "metrics_enabled", "pbar", "save_img", "suffix", "tile_overlap", "tile_size",
             "val_enabled", "val_freq"}, {"save_img", "val_enabled"}),
    "logger": ({"print_freq", "save_checkpoint_format", "save_checkpoint_freq", "use_tb_logger", "wandb"},
               {"print_freq", "save_checkpoint_freq", "use_tb_logger"}),
    "path": ({
        "experiments_root", "ignore_resume_networks", "log", "models", "param_key_d", "param_key_g",
        "pretrain_network_ae", "pretrain_network_ae_decoder", "pretrain_network_ae_decoder_ema",
        "pretrain_network_ae_ema", "pretrain_network_ae_path", "pretrain_network_d", "pretrain_network_g",
        "pretrain_network_g_ema", "pretrain_network_g_path", "pretrain_network_g_teacher", "results_root",
        "resume_models", "resume_state", "strict_load_d", "strict_load_g", "training_states", "visualization"},
        set()),
    "dataset": ({
        "accum_iter", "batch_size_per_gpu", "betag_range", "betag_range2", "betap_range", "betap_range2",
        "blur_kernel_size", "blur_kernel_size2", "blur_sigma", "blur_sigma2", "clip_size", "color", "dataroot_gt",
        "dataroot_lq", "dataset_enlarge_ratio", "filename_tmpl", "final_kernel_range", "final_sinc_prob",
        "gt_size", "io_backend", "kernel_list", "kernel_list2", "kernel_prob", "kernel_prob2", "kernel_range",
        "kernel_range2", "lq_resize_mode", "lq_size", "mean", "meta_info", "name", "num_prefetch_queue",
        "num_worker_per_gpu", "persistent_workers", "phase", "pin_memory", "prefetch_factor", "prefetch_mode",
        "scale", "sinc_prob", "sinc_prob2", "std", "type", "use_hflip", "use_rot"},
        {"name", "type"}),
}


def _check_struct(section: str, data: dict, where: str) -> None:
    allowed, required = TRAINNER_SCHEMA[section]
    unknown = set(data) - allowed
    assert not unknown, f"{where}: keys traiNNer-redux's strict decoder rejects: {sorted(unknown)}"
    missing = required - set(data)
    assert not missing, f"{where}: required keys missing: {sorted(missing)}"


@pytest.mark.parametrize("path", TRAINNER_FILES, ids=lambda p: p.name)
def test_trainner_yaml_passes_the_strict_schema(path):
    opt = yaml.safe_load(path.read_text())
    _check_struct("top", opt, path.name)
    assert "model_type" not in opt  # traiNNer-redux picks the model itself
    for section in ("train", "val", "logger", "path"):
        if opt.get(section) is not None:
            _check_struct(section, opt[section], f"{path.name}:{section}")
    for name, ds in opt["datasets"].items():
        _check_struct("dataset", ds, f"{path.name}:datasets.{name}")
        assert "gt_size" not in ds, "traiNNer-redux uses lq_size"
        if "lq_size" in ds:
            assert ds["lq_size"] % patch_multiple(opt["network_g"]) == 0
    # network_g is a free dict that traiNNer-redux passes to the builder together with scale=
    assert opt["network_g"]["type"] == opt["network_g"]["type"].lower()
    if "train" in opt:
        assert all("type" in loss for loss in opt["train"]["losses"])
        assert opt["train"]["ema_decay"] > 0
        assert opt["use_amp"] is True and opt["amp_bf16"] is True
        if "network_d" in opt:
            assert "optim_d" in opt["train"] and any(loss["type"] == "ganloss" for loss in opt["train"]["losses"])
