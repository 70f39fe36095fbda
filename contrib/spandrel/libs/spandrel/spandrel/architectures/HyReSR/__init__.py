from __future__ import annotations

import math
from typing import Literal

from typing_extensions import override

from spandrel.util import KeyCondition, get_seq_len

from ...__helpers.model_descriptor import (
    Architecture,
    ImageModelDescriptor,
    ModelTiling,
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
                "bottleneck.blocks.0.split.alpha",
                "bottleneck.blocks.0.high.moe.router.weight",
                KeyCondition.has_any(
                    "head.conv.weight",
                    "head_dysample.to_img.weight",
                ),
            ),
        )

    @override
    def load(self, state_dict: StateDict) -> ImageModelDescriptor[HyReSR]:
        # "hyresr_meta" holds what tensor shapes cannot tell, as integers:
        #   format 3: [3, out_ch, window, overlap, ffn_ratio, expert_ratio]
        # (ratios in thousandths). out_ch: the pixel-shuffle head's out_ch * scale**2
        # channels are ambiguous (16 = 1 x 4**2 = 4 x 2**2). window and overlap: the
        # relative position table only gives window + key window. The ratios are read
        # from shapes below; the stored ones only decide between values that give the
        # same shapes. The model checks the whole entry again when the weights load.
        # Formats 1 and 2 were network v1, which computes differently.
        meta = [int(v) for v in state_dict["hyresr_meta"].flatten().tolist()]
        if len(meta) < 1 or meta[0] != FORMAT_VERSION:
            version = meta[0] if meta else "(empty)"
            raise ValueError(
                f"HyReSR checkpoint format {version} is not supported by this version"
                f" of spandrel (format {FORMAT_VERSION})"
            )
        if len(meta) != 6:
            raise ValueError(
                f"HyReSR format {FORMAT_VERSION} checkpoint with a damaged hyresr_meta"
                f" entry: 6 integers expected, found {len(meta)}"
            )
        out_ch, window, overlap_m = meta[1:4]

        in_ch = state_dict["stem.weight"].shape[1]
        # U-Net levels: one Downsample (down1, down2, ...) per level above the bottleneck
        levels = 1
        while f"down{levels}.conv.weight" in state_dict:
            levels += 1
        # Downsample: 3x3 conv to dim/4 channels, then PixelUnshuffle(2)
        dims = (
            state_dict["stem.weight"].shape[0],
            *(
                state_dict[f"down{i}.conv.weight"].shape[0] * 4
                for i in range(1, levels)
            ),
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
        # a one-level network has no skips (msg_depth is then 1, unused)
        msg_depth = get_seq_len(state_dict, "skip1.refine") or 1
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

        # the hidden widths of every hybrid level: round(dim * ratio)
        hybrid = [
            (f"encoder{i}.blocks.0", dims[i - 1]) for i in range(naf_levels + 1, levels)
        ] + [(block, dims[-1])]
        # gated FFN: fc2 maps hidden -> dim
        ffn_ratio = _read_ratio(
            "ffn_ratio",
            [
                (d, state_dict[f"{p}.high.ffns.0.fc2.weight"].shape[1])
                for p, d in hybrid
            ],
            meta[4],
        )
        # experts: fc2 maps experts * hidden -> dim
        expert_ratio = _read_ratio(
            "expert_ratio",
            [
                (d, state_dict[f"{p}.high.moe.fc2.weight"].shape[1] // experts)
                for p, d in hybrid
            ],
            meta[5],
        )

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
            overlap=overlap_m / 1000,
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
            # GlobalMix (light and bigger variants) attends over the whole bottleneck:
            # an image upscaled in 512 px tiles differs from the whole-image result by up
            # to 4/255 with it, by up to 1/255 without it (channel attention alone;
            # measured on a 1024x1024 photo, 32 px tile overlap)
            tiling=ModelTiling.DISCOURAGED if global_mix else ModelTiling.SUPPORTED,
        )


def _read_ratio(name: str, widths: list[tuple[int, int]], stored_milli: int) -> float:
    """A ratio (3 decimals) with hidden == round(dim * ratio) for every (dim, hidden)."""

    def fits(milli: int) -> bool:
        return all(round(d * milli / 1000) == h for d, h in widths)

    dim, hidden = max(widths)
    milli = round(hidden * 1000 / dim)  # the widest level gives it to within 1/dim
    if not fits(milli):
        raise ValueError(
            f"HyReSR state dict with inconsistent {name}: hidden widths (dim, hidden)"
            f" {widths} fit no single ratio"
        )
    if stored_milli != milli:
        if not fits(stored_milli):
            raise ValueError(
                f"HyReSR state dict whose hyresr_meta {name} ({stored_milli / 1000})"
                f" contradicts its tensor shapes ({milli / 1000})"
            )
        # several ratios give these widths: the model was built with the stored one
        milli = stored_milli
    return milli / 1000


__all__ = ["HyReSRArch", "HyReSR"]
