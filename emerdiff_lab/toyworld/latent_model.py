"""ToyWorld-latent: a miniature of Stable Diffusion (VAE + latent UNet) trained by this project on
scenes whose classes colour does not give away (:mod:`emerdiff_lab.toyworld.scenes256`).

It is the issue's fallback size: 128 px images and a factor-4 VAE (the same 32 x 32 latents as
256 px with factor 8), because a factor-8 VAE on 256 px scenes did not learn textures within the
CPU time there was (MODEL_CARD.md, ToyWorld-latent); a factor-4 VAE costs a quarter of the pixels
per latent cell and one level less.

Architecture, SD 1.x's structure at small widths:

- VAE: ``AutoencoderKL``, factor 4 (128 px -> 4 x 32 x 32 latents), mid-block attention off
  (``mid_block_add_attention=False``) so that a model trained on 64 px crops behaves the same on
  whole images (it is fully convolutional). ``scaling_factor`` is measured after training so that
  scaled latents have unit standard deviation (SD's 0.18215 plays the same role).
- UNet: ``UNet2DConditionModel`` on 32 x 32 latents, levels 32 -> 16 -> 8, transformer blocks
  (self- and cross-attention) in the 16 x 16 down block, the 8 x 8 middle block and the 16 x 16
  up block. The 8 x 8 up block has no cross-attention, so the first up block with cross-attention
  (what :func:`emerdiff_lab.resolve_layers` finds by structure) is the 16 x 16 one: every feature
  cell covers 8 x 8 pixels (SD: 32 x 32 at 512 px; the pixel-space ToyWorld: 4 x 4).
- Condition: the empty prompt's embedding, stored in the weight file, as for ToyWorld.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..config import EmerDiffConfig
from ..core import (EmerDiffModel, ddpm_scheduler_from_config, moved, register_model,
                    resolve_device, resolve_dtype)
from ..tiny import SD_SCHEDULER_CONFIG
from .model import NullTextEncoder, build_text_encoder, null_embedding, null_ids

IMAGE_SIZE = 128
LATENT_SIZE = 32
MODEL_ID = "toyworld-latent"
WEIGHTS_PATH = Path(__file__).resolve().parents[1] / "weights" / "toyworld_latent.safetensors"
SCHEDULER_CONFIG = SD_SCHEDULER_CONFIG  # SD 1.x's: timesteps 981, 961, ..., 1 at 50 steps

VAE_CONFIG = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 3,
    "up_block_types": ("UpDecoderBlock2D",) * 3,
    # Narrow at full resolution, where convolutions cost the most on a CPU.
    "block_out_channels": (16, 48, 96),
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 8,
    "sample_size": IMAGE_SIZE,
    "mid_block_add_attention": False,
}

UNET_CONFIG = {
    "sample_size": LATENT_SIZE,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    # No cross-attention in the 8x8 up block: the 16x16 up block is then the semantic block.
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    # 3.9M parameters; narrow at 32x32 where convolutions cost the most. Measured on this shared
    # 2-core machine under load: 3-8 s per batch of 16 for training, against 3-12 s for
    # (48, 96, 160) (5.4M); the 12M UNet took 0.95 s on idle cores.
    "block_out_channels": (32, 96, 128),
    "layers_per_block": 1,
    "attention_head_dim": 4,  # diffusers' SD-style name for the number of heads
    "cross_attention_dim": 32,
    "norm_num_groups": 16,
}


# Blur sigma (px) of the maps: chosen on 16 validation scenes by
# emerdiff_lab.toyworld.evaluation.SETTING_RULE (issue 21): mIoU within 0.01 of the best blur's,
# the best boundary F-score of those (MODEL_CARD.md). It was 8 px, chosen by mIoU alone.
BLUR_SIGMA = 1.0


def default_config(blur_sigma: float = BLUR_SIGMA) -> EmerDiffConfig:
    """EmerDiff settings for this model: t_m, lambda from a small search on 4 validation scenes
    (t_m 281/481 x lambda 10/30/100 x blur 1/2/4/8 px, MODEL_CARD.md; the top settings tied
    within 0.01 mIoU there, so they are coarse choices), ``blur_sigma`` (px) :data:`BLUR_SIGMA`."""
    return EmerDiffConfig(num_masks=6, feature_timestep=1, modulation_timestep=481,
                          modulation_strength=100.0, blur_sigma=blur_sigma)


def build_vae(seed: int = 0, scaling_factor: float = 1.0):
    """The VAE with seeded random weights, float32, CPU, train mode."""
    from diffusers import AutoencoderKL

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoencoderKL(**VAE_CONFIG, scaling_factor=scaling_factor)


def build_unet(seed: int = 0):
    """The latent UNet with seeded random weights, float32, CPU, train mode."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**UNET_CONFIG)


def condition() -> torch.Tensor:
    """(1, 77, 32) float32: the empty prompt's embedding from the same seeded text encoder as the
    pixel-space ToyWorld's."""
    text_encoder, tokenizer = build_text_encoder()
    return null_embedding(text_encoder, tokenizer)


def state_dict_for_saving(vae=None, unet=None, context: torch.Tensor | None = None,
                          scaling_factor: float | None = None, text_encoder=None) -> dict:
    """Float16 flat dict for safetensors: ``vae.*``, ``unet.*``, ``text_encoder.*``,
    ``null_embedding`` (1, 77, 32) and ``vae_scaling_factor`` (a 1-element float32 tensor, kept
    in float32 for precision)."""
    tensors = {}
    for prefix, module in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder)):
        if module is not None:
            tensors.update({f"{prefix}.{k}": v.detach().to(torch.float16).contiguous()
                            for k, v in module.state_dict().items()})
    if context is not None:
        tensors["null_embedding"] = context.detach().to(torch.float16).contiguous()
    if scaling_factor is not None:
        tensors["vae_scaling_factor"] = torch.tensor([float(scaling_factor)], dtype=torch.float32)
    return tensors


def _load_part(module, tensors: dict, prefix: str, path: str) -> None:
    part = {k[len(prefix) + 1:]: v.float() for k, v in tensors.items()
            if k.startswith(prefix + ".")}
    missing, unexpected = module.load_state_dict(part, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the ToyWorld-latent {prefix}: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")


@functools.lru_cache(maxsize=2)
def _components_cpu(path: str) -> tuple:
    from safetensors.torch import load_file

    from ..tiny import _byte_level_clip_tokenizer

    if not Path(path).is_file():
        raise FileNotFoundError(f"ToyWorld-latent weights not found at {path}; they ship with "
                                f"the package (emerdiff_lab/weights/toyworld_latent.safetensors)")
    tensors = load_file(path)
    for key in ("null_embedding", "vae_scaling_factor"):
        if key not in tensors:
            raise ValueError(f"{path} holds no {key!r}: not a ToyWorld-latent weight file")
    vae = build_vae(scaling_factor=float(tensors["vae_scaling_factor"][0]))
    _load_part(vae, tensors, "vae", path)
    unet = build_unet()
    _load_part(unet, tensors, "unet", path)
    tokenizer = _byte_level_clip_tokenizer()
    text_encoder = NullTextEncoder(tensors["null_embedding"].float(), null_ids(tokenizer))
    for module in (vae, unet):
        module.eval().requires_grad_(False)
    return unet, vae, text_encoder, tokenizer


def load_toyworld_latent(device="cpu", dtype=torch.float32, *,
                         weights: str | Path | None = None, random_weights: bool = False,
                         seed: int = 0):
    """The trained ToyWorld-latent model as an :class:`~emerdiff_lab.EmerDiffModel`; offline.

    Args:
        device, dtype: where and in which precision the networks run.
        weights: a safetensors file written by ``scripts/train_toyworld_latent_unet.py``;
            default the packaged ``emerdiff_lab/weights/toyworld_latent.safetensors``.
        random_weights: a seeded random-weight UNet instead of the trained one (the evaluation's
            control); the VAE and the condition stay the trained ones, so that only the UNet's
            training differs.
        seed: UNet weight seed when ``random_weights``.
    """
    import copy

    device, dtype = resolve_device(device), resolve_dtype(dtype)
    parts = _components_cpu(str(weights or WEIGHTS_PATH))
    # Copies, so that moving one loaded model to a device or dtype never moves another.
    unet, vae, text_encoder = (copy.deepcopy(p) for p in parts[:3])
    if random_weights:
        unet = build_unet(seed).eval().requires_grad_(False)
    return EmerDiffModel(
        unet=moved(unet, device, dtype), vae=moved(vae, device, dtype),
        text_encoder=moved(text_encoder, device, dtype), tokenizer=parts[3],
        scheduler=ddpm_scheduler_from_config(SCHEDULER_CONFIG), device=device, dtype=dtype,
        default_config=default_config(),
        model_id=MODEL_ID if not random_weights else f"{MODEL_ID}-random{seed}",
        random_weights=random_weights)


# 128 px, factor-4 VAE + latent UNet (MODEL_CARD.md, issue 12)
register_model(MODEL_ID, lambda device, dtype, seed: load_toyworld_latent(device=device,
                                                                         dtype=dtype))
