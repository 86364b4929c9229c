"""The one place that names UNet layers: which attention layers EmerDiff reads and modulates.

Layers are found by structure, not by hard-coded indices: the block is the first (lowest
resolution) up block with cross-attention, which is the 16x16 block of SD 1.x/2.x at 512 px and
the 32x32 block of SDXL at 1024 px. Within it, layers are grouped by attention module
(``attentions.i``: one transformer block each in SD, ten in SDXL's lowest-resolution block).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SemanticBlock:
    """The lowest-resolution up block with cross-attention.

    Attributes:
        block_name: e.g. ``"up_blocks.1"``.
        cross_attention_layers: module paths of its cross-attention layers, in order.
        downsample: latent cells per feature cell along one side (4 for SD: 64 -> 16).
        attention_modules: the same layers grouped by attention module, in order
            (``((attentions.0 layers), (attentions.1 layers), ...)``).
    """

    block_name: str
    cross_attention_layers: tuple[str, ...]
    downsample: int
    attention_modules: tuple[tuple[str, ...], ...] = ()

    def feature_size(self, image_size: int, vae_scale_factor: int) -> int:
        """Side of the block's feature map for a square image of ``image_size`` pixels."""
        return image_size // (vae_scale_factor * self.downsample)


def find_semantic_block(unet: torch.nn.Module) -> SemanticBlock:
    """Finds the first up block that has cross-attention layers.

    Raises:
        ValueError: the UNet has no up block with cross-attention (EmerDiff needs one).
    """
    up_blocks = getattr(unet, "up_blocks", None)
    down_blocks = getattr(unet, "down_blocks", None)
    if up_blocks is None or down_blocks is None:
        raise ValueError(f"expected a diffusers UNet2DConditionModel with down_blocks and "
                         f"up_blocks, got {type(unet).__name__}")
    total_downsample = 2 ** sum(getattr(b, "downsamplers", None) is not None for b in down_blocks)
    upsampled = 1
    for index, block in enumerate(up_blocks):
        names = _cross_attention_paths(block, f"up_blocks.{index}")
        if names:
            return SemanticBlock(f"up_blocks.{index}", tuple(names), total_downsample // upsampled,
                                 _group_by_module(names, f"up_blocks.{index}"))
        if getattr(block, "upsamplers", None) is not None:
            upsampled *= 2
    raise ValueError(
        "this UNet has no up block with cross-attention layers; EmerDiff reads and modulates the "
        "cross-attention of the lowest-resolution such block (e.g. SD's CrossAttnUpBlock2D)")


def _cross_attention_paths(block: torch.nn.Module, prefix: str) -> list[str]:
    from diffusers.models.attention_processor import Attention

    paths = []
    for name, module in block.named_modules():
        if isinstance(module, Attention) and getattr(module, "is_cross_attention", False):
            paths.append(f"{prefix}.{name}")
    return paths


def _group_by_module(paths: list[str], prefix: str) -> tuple[tuple[str, ...], ...]:
    """Groups layer paths by their first two parts after ``prefix`` (``attentions.i``), keeping
    the order of first appearance."""
    groups: dict[str, list[str]] = {}
    for path in paths:
        module = ".".join(path[len(prefix) + 1:].split(".")[:2])
        groups.setdefault(module, []).append(path)
    return tuple(tuple(group) for group in groups.values())


def resolve_layers(unet: torch.nn.Module, image_size: int = 512, *,
                   vae_scale_factor: int = 8) -> tuple[str, str]:
    """The feature layer and the modulation layer of a UNet, by structure.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` (may live on the meta device).
        image_size: side of the square input image in pixels.
        vae_scale_factor: pixels per latent cell (8 for SD's VAE, 1 in pixel space).

    Returns:
        ``(feature_layer, modulation_layer)``: the first cross-attention layer of the first and
        of the third (or last, if fewer) attention module of the lowest-resolution up block with
        cross-attention, e.g. ``("up_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2")`` for SD 1.x/2.x (the paper's
        layers) and ``("up_blocks.0.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.0.attentions.2.transformer_blocks.0.attn2")`` for SDXL (our choice: the same
        modules, each holding ten transformer blocks there; docs/architectures.md).

    Raises:
        ValueError: no such block, or ``image_size`` does not divide into whole feature cells.
    """
    block = find_semantic_block(unet)
    check_image_size(unet, image_size, vae_scale_factor)
    modules = block.attention_modules
    return modules[0][0], modules[min(2, len(modules) - 1)][0]


def check_image_size(unet: torch.nn.Module, image_size: int, vae_scale_factor: int) -> None:
    """Raises ValueError unless the image side is a positive multiple of the UNet's total stride."""
    down_blocks = unet.down_blocks
    stride = vae_scale_factor * 2 ** sum(getattr(b, "downsamplers", None) is not None
                                         for b in down_blocks)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0 \
            or image_size % stride:
        raise ValueError(f"image_size must be a positive multiple of {stride} for this model "
                         f"(VAE factor {vae_scale_factor} x UNet stride), got {image_size!r}")


def validate_layer(unet: torch.nn.Module, name: str, *, argument: str) -> None:
    """Raises ValueError unless ``name`` is a cross-attention layer of ``unet``."""
    from diffusers.models.attention_processor import Attention

    module = dict(unet.named_modules()).get(name)
    if not isinstance(module, Attention) or not module.is_cross_attention:
        block = find_semantic_block(unet)
        raise ValueError(f"{argument}={name!r} is not a cross-attention layer of this UNet; "
                         f"expected a module path such as {block.cross_attention_layers[0]!r} "
                         f"(cross-attention layers of {block.block_name}: "
                         f"{list(block.cross_attention_layers)})")


def layer_downsample(unet: torch.nn.Module, name: str) -> int:
    """Latent cells per token of layer ``name`` along one side (4 for SD's 16x16 layers)."""
    ups = [getattr(b, "upsamplers", None) is not None for b in unet.up_blocks]
    downs = [getattr(b, "downsamplers", None) is not None for b in unet.down_blocks]
    parts = name.split(".")
    if parts[0] == "down_blocks":
        return 2 ** sum(downs[:int(parts[1])])
    if parts[0] == "mid_block":
        return 2 ** sum(downs)
    if parts[0] == "up_blocks":
        return 2 ** sum(downs) // 2 ** sum(ups[:int(parts[1])])
    raise ValueError(f"cannot place layer {name!r} in the UNet; expected a path under "
                     f"down_blocks, mid_block or up_blocks")
