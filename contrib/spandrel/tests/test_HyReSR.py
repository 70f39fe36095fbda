from spandrel.architectures.HyReSR import HyReSR, HyReSRArch

from .util import (
    ModelFile,
    TestImage,
    assert_image_inference,
    assert_loads_correctly,
    assert_size_requirements,
    disallowed_props,
    skip_if_unchanged,
)

skip_if_unchanged(__file__)

MODEL_URL = "https://github.com/OWNER/HyReSR/releases/download/spandrel-test-models/"


def test_load():
    assert_loads_correctly(
        HyReSRArch(),
        lambda: HyReSR(),
        lambda: HyReSR(
            dims=(32, 32, 48),
            depths=(1, 1, 2),
            window=6,
            experts=2,
            ffn_ratio=1.0,
            global_mix=False,
            kernel_size=9,
        ),
        lambda: HyReSR(
            dims=(48, 48, 64),
            depths=(2, 2, 2),
            experts=2,
            ffn_ratio=1.5,
            kernel_size=9,
        ),
        lambda: HyReSR(scale=2, overlap=0.5, high_depth=2),
        lambda: HyReSR(
            scale=1,
            dims=(32, 64, 128, 192, 320),
            depths=(2, 2, 2, 2, 4),
            experts=2,
            expert_ratio=0.5,
            low_depth=2,
            naf_levels=3,
        ),
        lambda: HyReSR(
            scale=1,
            dims=(32, 32, 48),
            depths=(1, 1, 2),
            window=6,
            experts=2,
            ffn_ratio=1.0,
            global_mix=False,
            kernel_size=9,
        ),
        lambda: HyReSR(
            scale=2,
            dims=(32, 32, 48),
            depths=(1, 1, 2),
            window=6,
            experts=2,
            ffn_ratio=1.0,
            global_mix=False,
            kernel_size=9,
        ),
        lambda: HyReSR(
            scale=3,
            dims=(32, 32, 48),
            depths=(1, 1, 2),
            window=6,
            experts=2,
            ffn_ratio=1.0,
            global_mix=False,
            kernel_size=9,
        ),
        lambda: HyReSR(
            scale=8,
            dims=(32, 32, 48),
            depths=(1, 1, 2),
            window=6,
            experts=2,
            ffn_ratio=1.0,
            global_mix=False,
            kernel_size=9,
        ),
        lambda: HyReSR(
            in_ch=1,
            out_ch=1,
            scale=2,
            dims=(32, 32, 48),
            depths=(1, 1, 2),
            window=6,
            experts=2,
            ffn_ratio=1.0,
            global_mix=False,
            kernel_size=9,
        ),
        lambda: HyReSR(
            in_ch=4,
            out_ch=4,
            scale=2,
            dims=(32, 32, 48),
            depths=(1, 1, 2),
            window=6,
            experts=2,
            ffn_ratio=1.0,
            global_mix=False,
            kernel_size=9,
        ),
        lambda: HyReSR(
            in_ch=4,
            dims=(32, 32, 48),
            depths=(1, 1, 2),
            window=6,
            experts=2,
            ffn_ratio=1.0,
            global_mix=False,
            kernel_size=9,
        ),
        lambda: HyReSR(
            scale=2,
            dims=(32, 32, 48),
            depths=(1, 1, 2),
            window=6,
            experts=2,
            ffn_ratio=1.0,
            global_mix=False,
            kernel_size=9,
            upsampler="dysample",
        ),
        lambda: HyReSR(
            scale=3,
            dims=(32, 32, 48),
            depths=(1, 1, 2),
            window=6,
            experts=2,
            ffn_ratio=1.0,
            global_mix=False,
            kernel_size=9,
            upsampler="dysample",
            noise=True,
        ),
        lambda: HyReSR(
            scale=1,
            dims=(32, 32, 48),
            depths=(1, 1, 2),
            window=6,
            experts=2,
            ffn_ratio=1.0,
            global_mix=False,
            kernel_size=9,
            noise=True,
        ),
        lambda: HyReSR(
            dims=(48, 48, 64),
            depths=(2, 2, 2),
            experts=2,
            ffn_ratio=1.5,
            kernel_size=9,
            upsampler="dysample",
        ),
        lambda: HyReSR(
            dims=(48,),
            depths=(2,),
            window=6,
            experts=2,
            ffn_ratio=1.0,
            global_mix=False,
            kernel_size=9,
        ),
        lambda: HyReSR(
            scale=2,
            dims=(16, 24, 32),
            depths=(1, 2, 1),
            overlap=0.5,
            experts=3,
            expert_ratio=0.75,
            ffn_ratio=1.25,
            low_depth=2,
            high_depth=2,
            kernel_size=5,
        ),
    )


def test_load_fused():
    assert_loads_correctly(
        HyReSRArch(),
        lambda: HyReSR(
            scale=2,
            dims=(32, 32, 48),
            depths=(1, 1, 2),
            window=6,
            experts=2,
            ffn_ratio=1.0,
            global_mix=False,
            kernel_size=9,
        ).fuse(),
        lambda: HyReSR(
            dims=(48, 48, 64),
            depths=(2, 2, 2),
            experts=2,
            ffn_ratio=1.5,
            kernel_size=9,
            upsampler="dysample",
        ).fuse(),
        lambda: HyReSR(
            scale=2,
            dims=(16, 24, 32),
            depths=(1, 2, 1),
            overlap=0.5,
            experts=3,
            expert_ratio=0.75,
            ffn_ratio=1.25,
            low_depth=2,
            high_depth=2,
            kernel_size=5,
        ).fuse(),
    )


def _model_file(name: str) -> ModelFile:
    return ModelFile.from_url(MODEL_URL + name)


def test_size_requirements():
    file = _model_file("2x_HyReSR_tiny_test.safetensors")
    assert_size_requirements(file.load_model())


def test_2x_HyReSR_tiny_test(snapshot):
    file = _model_file("2x_HyReSR_tiny_test.safetensors")
    model = file.load_model()
    assert model == snapshot(exclude=disallowed_props)
    assert isinstance(model.model, HyReSR)
    assert_image_inference(
        file,
        model,
        [TestImage.SR_16, TestImage.SR_32, TestImage.SR_64],
    )


def test_4x_HyReSR_tiny_test(snapshot):
    file = _model_file("4x_HyReSR_tiny_test.safetensors")
    model = file.load_model()
    assert model == snapshot(exclude=disallowed_props)
    assert isinstance(model.model, HyReSR)
    assert_image_inference(
        file,
        model,
        [TestImage.SR_16, TestImage.SR_32, TestImage.SR_64],
    )


def test_4x_HyReSR_light_dysample_fused_test(snapshot):
    file = _model_file("4x_HyReSR_light_dysample_fused_test.safetensors")
    model = file.load_model()
    assert model == snapshot(exclude=disallowed_props)
    assert isinstance(model.model, HyReSR)
    assert_image_inference(
        file,
        model,
        [TestImage.SR_16, TestImage.SR_32, TestImage.SR_64],
    )
