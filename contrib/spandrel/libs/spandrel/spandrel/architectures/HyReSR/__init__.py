from __future__ import annotations

import math
from typing import Literal

from typing_extensions import override

from spandrel.util import KeyCondition, get_seq_len

from ...__helpers.model_descriptor import (
    Architecture,
    ImageModelDescriptor,
    ModelTiling,
    SizeRequirements,
    StateDict,
)
from .__arch.HyReSR import FORMAT_VERSION, DySampleHead, HyReSR


class HyReSRArch(Architecture[HyReSR]):
    def __init__(self) -> None:
        super().__init__(
            id="HyReSR",
            detect=KeyCondition.has_all(
                "hyresr_meta",
                "stem.weight",
                "down1.conv.weight",
                "bottleneck.blocks.0.split.alpha",
                "bottleneck.blocks.0.high.moe.router.weight",
                "skip1.refine.0.pw1.weight",
                KeyCondition.has_any(
                    "head.conv.weight",
                    "head_dysample.to_img.weight",
                ),
            ),
        )

    @override
    def load(self, state_dict: StateDict) -> ImageModelDescriptor[HyReSR]:
        # What tensor shapes cannot tell is stored as integers in "hyresr_meta" (the
        # three ratios in thousandths; the model checks the whole entry again when the
        # weights are loaded, so a wrong reading below cannot go unnoticed):
        #   format 3: [3, out_ch, window, overlap, ffn_ratio, expert_ratio]
        # out_ch is stored because the pixel-shuffle head's out_ch * scale**2 channels
        # are ambiguous (16 = 1 x 4**2 = 4 x 2**2). Formats 1 and 2 were network v1,
        # which computes differently (plain skips, per-stage window shifts).
        meta = [int(v) for v in state_dict["hyresr_meta"].tolist()]
        if meta[0] != FORMAT_VERSION:
            raise ValueError(
                f"HyReSR checkpoint format {meta[0]} is not supported by this version of"
                f" spandrel (format {FORMAT_VERSION})"
            )
        out_ch, window, overlap_m, ffn_m, expert_m = meta[1:6]
        overlap = overlap_m / 1000
        ffn_ratio = ffn_m / 1000
        expert_ratio = expert_m / 1000

        in_ch = state_dict["stem.weight"].shape[1]
        # U-Net levels: one Downsample (down1, down2, ...) per level above the bottleneck
        levels = 1
        while f"down{levels}.conv.weight" in state_dict:
            levels += 1
        # Downsample: 3x3 conv to dim/4 channels, then PixelUnshuffle(2)
        dims = (
            state_dict["stem.weight"].shape[0],
            *(state_dict[f"down{i}.conv.weight"].shape[0] * 4 for i in range(1, levels)),
        )
        # the decoder stages mirror the encoder stages
        depths = (
            *(get_seq_len(state_dict, f"encoder{i}.blocks") for i in range(1, levels)),
            get_seq_len(state_dict, "bottleneck.blocks"),
        )
        # the top naf_levels levels hold NAF blocks only (restoration), hybrid blocks below
        naf_levels = 0
        while f"encoder{naf_levels + 1}.blocks.0.norm1.weight" in state_dict:
            naf_levels += 1
        msg_depth = get_seq_len(state_dict, "skip1.refine")
        block = "bottleneck.blocks.0"  # every hybrid block has the same layout
        experts = state_dict[f"{block}.high.moe.router.weight"].shape[0]
        low_depth = get_seq_len(state_dict, f"{block}.low.blocks")
        high_depth = get_seq_len(state_dict, f"{block}.high.attns")
        global_mix = "bottleneck.global_mix.qkv.weight" in state_dict
        noise = f"{block}.high.noise.strength" in state_dict
        # fused checkpoints hold one depthwise conv per re-parameterizable block
        fused = f"{block}.reparam.fused.weight" in state_dict
        reparam = "fused" if fused else "large"
        kernel_size = state_dict[f"{block}.reparam.{reparam}.weight"].shape[-1]

        upsampler: Literal["pixelshuffle", "dysample"]
        if "head_dysample.to_img.weight" in state_dict:
            upsampler = "dysample"
            # a 1x1 conv to 2 * groups * scale**2 sampling offsets
            scale_sq = state_dict["head_dysample.offset.weight"].shape[0] // (
                2 * DySampleHead.groups
            )
        else:
            upsampler = "pixelshuffle"
            # a 3x3 conv to out_ch * scale**2 channels, then PixelShuffle(scale)
            scale_sq = state_dict["head.conv.weight"].shape[0] // out_ch
        scale = math.isqrt(scale_sq)

        model = HyReSR(
            in_ch=in_ch,
            out_ch=out_ch,
            scale=scale,
            dims=dims,
            depths=depths,
            window=window,
            overlap=overlap,
            experts=experts,
            expert_ratio=expert_ratio,
            ffn_ratio=ffn_ratio,
            low_depth=low_depth,
            high_depth=high_depth,
            msg_depth=msg_depth,
            naf_levels=naf_levels,
            global_mix=global_mix,
            kernel_size=kernel_size,
            upsampler=upsampler,
            noise=noise,
        )
        if fused:
            model.fuse()

        tags = [model.variant, f"{dims[0]}dim", f"{experts}experts"]
        if fused:
            tags.append("fused")
        if upsampler == "dysample":
            tags.append("dysample")

        return ImageModelDescriptor(
            model,
            state_dict,
            architecture=self,
            purpose="Restoration" if scale == 1 else "SR",
            tags=tags,
            supports_half=True,
            supports_bfloat16=True,
            scale=scale,
            input_channels=in_ch,
            output_channels=out_ch,
            # any size: the network pads to a multiple of 2**levels internally
            size_requirements=SizeRequirements(minimum=1),
            # GlobalMix and channel attention see the whole input: tiles differ slightly
            tiling=ModelTiling.SUPPORTED,
        )


__all__ = ["HyReSRArch", "HyReSR"]
