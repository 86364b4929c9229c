"""The one place that names denoiser layers: which attention layers EmerDiff reads and
modulates, and the token grid each of them works on.

Layers are found by structure, not by hard-coded indices. Two denoiser structures are known:

- a UNet (``down_blocks``/``up_blocks``): the block is the first (lowest resolution) up block
  with cross-attention, which is the 16x16 block of SD 1.x/2.x at 512 px and the 32x32 block of
  SDXL at 1024 px. Within it, layers are grouped by attention module (``attentions.i``: one
  transformer block each in SD, ten in SDXL's lowest-resolution block). Tokens shrink by 2 at
  every down block.
- a stack of transformer blocks on a patch grid (``transformer_blocks`` and a ``patch_size`` in
  the config, as diffusion transformers have): every block works on the same grid, one token per
  ``patch_size`` x ``patch_size`` latent cells; the default layer is the cross-attention of the
  middle block. FLUX.1 (:class:`FluxGeometry`) adds ``single_transformer_blocks`` and packs
  2x2 latent cells into a token outside the transformer.

:func:`geometry_of` picks the structure of a denoiser; the module-level functions
(:func:`resolve_layers`, :func:`find_semantic_block`, :func:`check_image_size`,
:func:`layer_downsample`) take a denoiser and go through it. A model's architecture says which
geometry its denoiser has (``model.architecture.geometry(model)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SemanticBlock:
    """The block whose cross-attention layers EmerDiff reads and modulates.

    Attributes:
        block_name: e.g. ``"up_blocks.1"`` (a UNet) or ``"transformer_blocks"`` (a stack of
            transformer blocks, all on one grid).
        cross_attention_layers: module paths of its cross-attention layers, in order (the
            explorer's layer menu).
        downsample: latent cells per feature cell along one side (4 for SD: 64 -> 16; the patch
            size for a transformer).
        attention_modules: the same layers grouped by attention module, in order
            (``((attentions.0 layers), (attentions.1 layers), ...)``; one transformer block
            each for a transformer).
    """

    block_name: str
    cross_attention_layers: tuple[str, ...]
    downsample: int
    attention_modules: tuple[tuple[str, ...], ...] = ()

    def feature_size(self, image_size: int, vae_scale_factor: int) -> int:
        """Side of the block's feature map for a square image of ``image_size`` pixels."""
        return image_size // (vae_scale_factor * self.downsample)


class UNetGeometry:
    """Layer geometry of a diffusers ``UNet2DConditionModel`` (may live on the meta device)."""

    def __init__(self, unet: torch.nn.Module):
        if getattr(unet, "up_blocks", None) is None or getattr(unet, "down_blocks", None) is None:
            raise ValueError(f"expected a diffusers UNet2DConditionModel with down_blocks and "
                             f"up_blocks, got {type(unet).__name__}")
        self.denoiser = unet

    @property
    def stride(self) -> int:
        """Latent cells per token of the coarsest layer along one side (8 for SD's 4 levels)."""
        return 2 ** sum(getattr(b, "downsamplers", None) is not None
                        for b in self.denoiser.down_blocks)

    def semantic_block(self) -> SemanticBlock:
        """The first up block that has cross-attention layers.

        Raises:
            ValueError: the UNet has no up block with cross-attention (EmerDiff needs one).
        """
        upsampled = 1
        for index, block in enumerate(self.denoiser.up_blocks):
            names = _cross_attention_paths(block, f"up_blocks.{index}")
            if names:
                return SemanticBlock(f"up_blocks.{index}", tuple(names), self.stride // upsampled,
                                     _group_by_module(names, f"up_blocks.{index}"))
            if getattr(block, "upsamplers", None) is not None:
                upsampled *= 2
        raise ValueError(
            "this UNet has no up block with cross-attention layers; EmerDiff reads and modulates "
            "the cross-attention of the lowest-resolution such block (e.g. SD's "
            "CrossAttnUpBlock2D)")

    def default_layers(self) -> tuple[str, str]:
        """The first cross-attention layer of the first and of the third (or last, if fewer)
        attention module of the semantic block."""
        modules = self.semantic_block().attention_modules
        return modules[0][0], modules[min(2, len(modules) - 1)][0]

    def layer_downsample(self, name: str) -> int:
        """Latent cells per token of layer ``name`` along one side (4 for SD's 16x16 layers)."""
        ups = [getattr(b, "upsamplers", None) is not None for b in self.denoiser.up_blocks]
        downs = [getattr(b, "downsamplers", None) is not None for b in self.denoiser.down_blocks]
        parts = name.split(".")
        if parts[0] == "down_blocks":
            return 2 ** sum(downs[:int(parts[1])])
        if parts[0] == "mid_block":
            return 2 ** sum(downs)
        if parts[0] == "up_blocks":
            return 2 ** sum(downs) // 2 ** sum(ups[:int(parts[1])])
        raise ValueError(f"cannot place layer {name!r} in the UNet; expected a path under "
                         f"down_blocks, mid_block or up_blocks")

    def activation_bytes(self, latent_h: int, latent_w: int, bytes_per_value: int) -> int:
        """A rough peak of activation memory per batch element in bytes (scaled from the
        widest full-resolution layer; only the order of magnitude matters)."""
        width = self.denoiser.config.block_out_channels[0]
        return 64 * latent_h * latent_w * width * bytes_per_value


class PatchGeometry:
    """Layer geometry of a diffusion transformer: ``transformer_blocks`` on one patch grid.

    Every block sees one token per ``patch_size`` x ``patch_size`` latent cells (32x32 tokens
    at 512 px for patch size 2 and an 8x VAE), so every layer has the same grid.
    """

    def __init__(self, denoiser: torch.nn.Module):
        blocks = getattr(denoiser, "transformer_blocks", None)
        patch = getattr(getattr(denoiser, "config", None), "patch_size", None)
        if blocks is None or not patch:
            raise ValueError(f"expected a diffusion transformer with transformer_blocks and a "
                             f"patch_size in its config, got {type(denoiser).__name__}")
        self.denoiser = denoiser

    @property
    def stride(self) -> int:
        """Latent cells per token along one side: the patch size."""
        return int(self.denoiser.config.patch_size)

    def semantic_block(self) -> SemanticBlock:
        """All blocks' cross-attention layers (one grid), one attention module per block."""
        names = _cross_attention_paths(self.denoiser.transformer_blocks, "transformer_blocks")
        if not names:
            raise ValueError("this transformer has no cross-attention layers; EmerDiff reads and "
                             "modulates a block's cross-attention")
        return SemanticBlock("transformer_blocks", tuple(names), self.stride,
                             tuple((name,) for name in names))

    def default_layers(self) -> tuple[str, str]:
        """The cross-attention of block ``num_layers // 2`` for both features and modulation
        (a choice of mechanics: the middle of the stack; see docs/architectures.md)."""
        names = self.semantic_block().cross_attention_layers
        middle = f"transformer_blocks.{len(self.denoiser.transformer_blocks) // 2}."
        chosen = next((n for n in names if n.startswith(middle)), names[len(names) // 2])
        return chosen, chosen

    def layer_downsample(self, name: str) -> int:
        """Latent cells per token of layer ``name`` along one side: the patch size."""
        if not name.startswith("transformer_blocks."):
            raise ValueError(f"cannot place layer {name!r} in the transformer; expected a path "
                             f"under transformer_blocks")
        return self.stride

    def activation_bytes(self, latent_h: int, latent_w: int, bytes_per_value: int) -> int:
        """A rough peak of activation memory per batch element in bytes: one block's hidden
        states and its self-attention probabilities (materialised for injection)."""
        config = self.denoiser.config
        tokens = (latent_h // self.stride) * (latent_w // self.stride)
        inner = config.num_attention_heads * config.attention_head_dim
        return bytes_per_value * tokens * (64 * inner + 2 * config.num_attention_heads * tokens)


class JointPatchGeometry(PatchGeometry):
    """Layer geometry of an MM-DiT (SD3, SD3.5): ``transformer_blocks`` of joint text-image
    attention on one patch grid (32x32 tokens at 512 px, 64x64 at 1024 px, in every block).

    The layers EmerDiff reads and modulates are the joint attentions (``transformer_blocks.i.attn``,
    the ones with text keys); SD3.5's image-only ``attn2`` are not offered (see
    docs/architectures.md). The position embedding is cropped from a
    ``pos_embed_max_size``-square table, which bounds the image size.
    """

    def semantic_block(self) -> SemanticBlock:
        """Every block's joint attention, one attention module per block."""
        names = joint_attention_paths(self.denoiser.transformer_blocks, "transformer_blocks")
        if not names:
            raise ValueError("this transformer has no joint text-image attention layers")
        return SemanticBlock("transformer_blocks", tuple(names), self.stride,
                             tuple((name,) for name in names))

    @property
    def max_latent_side(self) -> int | None:
        """Latent cells per side the position embedding reaches (``pos_embed_max_size`` x
        patch size), or None without a limit."""
        limit = getattr(self.denoiser.config, "pos_embed_max_size", None)
        return None if limit is None else int(limit) * self.stride

    def check_latent_size(self, latent_h: int, latent_w: int) -> None:
        """ValueError when the latents exceed the position embedding's table."""
        limit = self.max_latent_side
        if limit is not None and max(latent_h, latent_w) > limit:
            raise ValueError(f"latents of {latent_h}x{latent_w} cells exceed this transformer's "
                             f"position embedding ({limit} cells per side: pos_embed_max_size "
                             f"{limit // self.stride} x patch size {self.stride}); use a smaller "
                             f"image")


class FluxGeometry(PatchGeometry):
    """Layer geometry of FLUX.1 (``FluxTransformer2DModel``): double-stream blocks
    (``transformer_blocks``, text and image kept apart and joined inside attention) followed by
    single-stream blocks (``single_transformer_blocks``, [text, image] joined before attention),
    all on one token grid.

    The config's ``patch_size`` is 1 because the packing happens outside the transformer: 2x2
    latent cells become one 64-channel token (the pipeline's ``_pack_latents``), so one token
    covers 2 x patch_size latent cells per side (32x32 tokens at 512 px, 64x64 at 1024 px). RoPE
    has no table, so no image-size limit beyond even latent sides.

    Args:
        denoiser: the transformer (may live on the meta device).
        text_tokens: T5 tokens joined to the image tokens (512 for FLUX.1-dev), for the
            activation estimate only.
    """

    def __init__(self, denoiser: torch.nn.Module, text_tokens: int = 512):
        if getattr(denoiser, "single_transformer_blocks", None) is None:
            raise ValueError(f"expected a FluxTransformer2DModel with single_transformer_blocks, "
                             f"got {type(denoiser).__name__}")
        super().__init__(denoiser)
        blocks = denoiser.transformer_blocks
        if len(blocks) and not is_flux_attention(blocks[0].attn):
            raise ValueError("this diffusers drives FLUX with its generic Attention class; "
                             "EmerDiff's FLUX support needs a diffusers with FluxAttention "
                             "(developed on 0.42.1)")
        self.text_tokens = text_tokens

    @property
    def stride(self) -> int:
        """Latent cells per token along one side: 2 (the 2x2 packing) x the patch size."""
        return 2 * int(self.denoiser.config.patch_size)

    def semantic_block(self) -> SemanticBlock:
        """Every double-stream block's attention, then every single-stream block's."""
        stacks = ("transformer_blocks", "single_transformer_blocks")
        names = [f"{stack}.{i}.attn" for stack in stacks
                 for i in range(len(getattr(self.denoiser, stack)))]
        return SemanticBlock("transformer_blocks, single_transformer_blocks", tuple(names),
                             self.stride, tuple((name,) for name in names))

    def default_layers(self) -> tuple[str, str]:
        """The attention of double-stream block ``num_layers // 2`` for both (our choice: it has
        ``to_out`` and the gate ``gate_msa`` as SD3's blocks; docs/architectures.md)."""
        chosen = f"transformer_blocks.{len(self.denoiser.transformer_blocks) // 2}.attn"
        return chosen, chosen

    def layer_downsample(self, name: str) -> int:
        if not name.startswith(("transformer_blocks.", "single_transformer_blocks.")):
            raise ValueError(f"cannot place layer {name!r} in the transformer; expected a path "
                             f"under transformer_blocks or single_transformer_blocks")
        return self.stride

    def activation_bytes(self, latent_h: int, latent_w: int, bytes_per_value: int) -> int:
        """As :meth:`PatchGeometry.activation_bytes`, over the joined text and image tokens."""
        config = self.denoiser.config
        tokens = (latent_h // self.stride) * (latent_w // self.stride) + self.text_tokens
        inner = config.num_attention_heads * config.attention_head_dim
        return bytes_per_value * tokens * (64 * inner + 2 * config.num_attention_heads * tokens)

    def check_latent_size(self, latent_h: int, latent_w: int) -> None:
        """ValueError unless both latent sides split into whole 2x2 packs."""
        if latent_h % self.stride or latent_w % self.stride:
            raise ValueError(f"latents of {latent_h}x{latent_w} cells do not pack into "
                             f"{self.stride}x{self.stride} tokens; use an image side that is a "
                             f"multiple of {8 * self.stride} px")


def is_flux_attention(module) -> bool:
    """A FLUX.1 attention (diffusers' ``FluxAttention``: double- or single-stream)."""
    try:
        from diffusers.models.transformers.transformer_flux import FluxAttention
    except ImportError:  # a diffusers before FluxAttention
        return False
    return isinstance(module, FluxAttention)


def is_single_stream_attention(module) -> bool:
    """FLUX's single-stream attention: text and image joined before it (no added projections,
    no ``to_out``: its output goes to the block's ``proj_out`` with the MLP branch)."""
    return is_flux_attention(module) and module.added_kv_proj_dim is None


def is_joint_attention(module) -> bool:
    """A diffusers ``Attention`` with added key/value projections (text tokens joined to the
    image tokens, as in SD3's ``JointTransformerBlock``)."""
    return getattr(module, "added_kv_proj_dim", None) is not None


def joint_attention_paths(block: torch.nn.Module, prefix: str) -> list[str]:
    from diffusers.models.attention_processor import Attention

    return [f"{prefix}.{name}" for name, module in block.named_modules()
            if isinstance(module, Attention) and is_joint_attention(module)]


def geometry_of(denoiser: torch.nn.Module):
    """The geometry of a denoiser's structure: :class:`UNetGeometry` for a UNet,
    :class:`PatchGeometry` for a stack of transformer blocks on a patch grid.

    Raises:
        ValueError: neither structure.
    """
    if getattr(denoiser, "up_blocks", None) is not None:
        return UNetGeometry(denoiser)
    if getattr(denoiser, "single_transformer_blocks", None) is not None:
        return FluxGeometry(denoiser)
    blocks = getattr(denoiser, "transformer_blocks", None)
    if blocks is not None:
        joint = any(is_joint_attention(getattr(block, "attn", None)) for block in blocks)
        return JointPatchGeometry(denoiser) if joint else PatchGeometry(denoiser)
    raise ValueError(f"expected a diffusers UNet2DConditionModel with down_blocks and up_blocks "
                     f"or a diffusion transformer with transformer_blocks, got "
                     f"{type(denoiser).__name__}")


def find_semantic_block(unet: torch.nn.Module) -> SemanticBlock:
    """The block EmerDiff's layers come from: a UNet's first up block with cross-attention, or
    a transformer's stack of blocks.

    Raises:
        ValueError: the denoiser has no such block (EmerDiff needs one).
    """
    return geometry_of(unet).semantic_block()


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
    """The feature layer and the modulation layer of a denoiser, by structure.

    Args:
        unet: a diffusers ``UNet2DConditionModel`` or diffusion transformer (may live on the
            meta device).
        image_size: side of the square input image in pixels.
        vae_scale_factor: pixels per latent cell (8 for SD's VAE, 1 in pixel space).

    Returns:
        ``(feature_layer, modulation_layer)``. For a UNet: the first cross-attention layer of the
        first and of the third (or last, if fewer) attention module of the lowest-resolution up
        block with cross-attention, e.g. ``("up_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2")`` for SD 1.x/2.x (the paper's
        layers) and ``("up_blocks.0.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.0.attentions.2.transformer_blocks.0.attn2")`` for SDXL (our choice: the same
        modules, each holding ten transformer blocks there; docs/architectures.md). For a
        transformer: the cross-attention of block ``num_layers // 2`` for both (our choice,
        e.g. ``transformer_blocks.14.attn2`` of a 28-block stack).

    Raises:
        ValueError: no such block, or ``image_size`` does not divide into whole feature cells.
    """
    geometry = geometry_of(unet)
    geometry.semantic_block()  # refuses a denoiser without one before the size is checked
    check_image_size(unet, image_size, vae_scale_factor)
    return geometry.default_layers()


def check_image_size(unet: torch.nn.Module, image_size: int, vae_scale_factor: int, *,
                     geometry=None) -> None:
    """Raises ValueError unless the image side is a positive multiple of the denoiser's total
    stride (VAE factor x UNet downsampling, or x patch size). ``geometry``: the model
    architecture's (``model.architecture.geometry(model)``); None: by the denoiser's
    structure."""
    geometry = geometry or geometry_of(unet)
    stride = vae_scale_factor * geometry.stride
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size <= 0 \
            or image_size % stride:
        raise ValueError(f"image_size must be a positive multiple of {stride} for this model "
                         f"(VAE factor {vae_scale_factor} x denoiser stride), got "
                         f"{image_size!r}")
    limit = getattr(geometry, "max_latent_side", None)
    if limit is not None and image_size > limit * vae_scale_factor:
        raise ValueError(f"image_size {image_size} exceeds this transformer's position "
                         f"embedding: at most {limit * vae_scale_factor} px (pos_embed_max_size "
                         f"{limit // geometry.stride} x patch size {geometry.stride} x VAE factor "
                         f"{vae_scale_factor})")


def validate_layer(unet: torch.nn.Module, name: str, *, argument: str) -> None:
    """Raises ValueError unless ``name`` is a cross-attention layer of ``unet``."""
    from diffusers.models.attention_processor import Attention

    module = dict(unet.named_modules()).get(name)
    if not is_flux_attention(module) and (
            not isinstance(module, Attention)
            or not (module.is_cross_attention or is_joint_attention(module))):
        block = find_semantic_block(unet)
        raise ValueError(f"{argument}={name!r} is not a cross-attention layer of this model; "
                         f"expected a module path such as {block.cross_attention_layers[0]!r} "
                         f"(cross-attention layers of {block.block_name}: "
                         f"{list(block.cross_attention_layers)})")


def layer_downsample(unet: torch.nn.Module, name: str) -> int:
    """Latent cells per token of layer ``name`` along one side (4 for SD's 16x16 layers, the
    patch size for a transformer)."""
    return geometry_of(unet).layer_downsample(name)
