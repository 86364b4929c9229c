"""The ToyWorld model: a small pixel-space diffusion UNet trained by this project on generated scenes.

Architecture (64 px, RGB in [-1, 1] is its own latent, no VAE):
resolution 64 -> 32 -> 16 -> 8 with plain residual blocks at 64 and 32, transformer blocks
(self- and cross-attention) at 16 (down and up) and in the 8x8 middle block. The lowest-resolution up block
with cross-attention is therefore the 16x16 one, so EmerDiff reads and modulates 16x16 features
(4x4-pixel cells), the same cell-to-image ratio as SD's 16x16 layers at 64x64 latents.
Conditioning is fixed: the empty prompt through a small seeded CLIP text encoder, whose weights
ship in the same file as the UNet so that nothing depends on a random-number stream.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..config import EmerDiffConfig

IMAGE_SIZE = 64
TEXT_WIDTH = 32
WEIGHTS_PATH = Path(__file__).resolve().parents[1] / "weights" / "toyworld.safetensors"

# A DDPM schedule on the SD 1.x timestep grid (1000 steps, steps_offset 1: 50-step timesteps
# 981, 961, ..., 1), so that timesteps in configs mean the same as for SD and the tiny model.
SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
}

UNET_CONFIG = {
    "sample_size": IMAGE_SIZE,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    # Up block 0 (8x8) has no cross-attention on purpose: the first up block with
    # cross-attention, which EmerDiff resolves by structure, is then the 16x16 one.
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
    # Narrow at 64 and 32 px, where convolutions cost the most on a CPU; wide where the
    # semantics live. 1 s per batch of 16 on one CPU thread, 4.0M parameters.
    "block_out_channels": (16, 48, 96, 128),
    "layers_per_block": 1,
    "attention_head_dim": 4,  # diffusers' SD-style name for the number of heads
    "cross_attention_dim": TEXT_WIDTH,
    "norm_num_groups": 8,
}


def default_config() -> EmerDiffConfig:
    """EmerDiff settings measured on this model (see MODEL_CARD.md), not the paper's SD values."""
    return EmerDiffConfig(num_masks=6, feature_timestep=1, modulation_timestep=481,
                          modulation_strength=10.0, blur_sigma=1.0)


def build_unet(seed: int = 0):
    """The ToyWorld UNet with seeded random weights, float32, on the CPU (train mode)."""
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**UNET_CONFIG)


def build_text_encoder(seed: int = 0):
    """``(text_encoder, tokenizer)``: a 2-layer width-32 CLIPTextModel and the tiny model's
    byte-level tokenizer; float32, CPU, eval mode, seeded random weights."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..tiny import _byte_level_clip_tokenizer

    tokenizer = _byte_level_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=77,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id))
    return text_encoder.eval().requires_grad_(False), tokenizer


@torch.no_grad()
def null_embedding(text_encoder, tokenizer) -> torch.Tensor:
    """(1, 77, 32) float32: the embedding of the empty prompt, the model's only condition."""
    ids = tokenizer("", padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    return text_encoder(ids)[0].float()


def state_dict_for_saving(unet, text_encoder) -> dict:
    """Both networks' weights in one flat float16 dict (keys prefixed ``unet.`` and ``text.``)."""
    tensors = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    tensors.update({f"text.{k}": v for k, v in text_encoder.state_dict().items()})
    return {k: v.detach().to(torch.float16).contiguous() for k, v in tensors.items()}


@functools.lru_cache(maxsize=2)
def _components_cpu(path: str) -> tuple:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"ToyWorld weights not found at {path}; they ship with the "
                                f"package (emerdiff_lab/weights/toyworld.safetensors) or are "
                                f"written by scripts/train_toyworld.py --export")
    tensors = load_file(path)
    unet = build_unet()
    text_encoder, tokenizer = build_text_encoder()
    for prefix, module in (("unet.", unet), ("text.", text_encoder)):
        part = {k[len(prefix):]: v.float() for k, v in tensors.items() if k.startswith(prefix)}
        missing, unexpected = module.load_state_dict(part, strict=False)
        if missing or unexpected:
            raise ValueError(f"{path} does not match the ToyWorld architecture: missing "
                             f"{missing[:5]}, unexpected {unexpected[:5]} ({prefix[:-1]})")
    unet.eval().requires_grad_(False)
    return unet, text_encoder, tokenizer


def load_toyworld(device="cpu", dtype=torch.float32, *, weights: str | Path | None = None,
                  random_weights: bool = False, seed: int = 0):
    """The trained ToyWorld model as an :class:`~emerdiff_lab.EmerDiffModel`; offline, seconds.

    Args:
        device, dtype: where and in which precision the networks run (torch objects or strings).
        weights: a safetensors file written by ``scripts/train_toyworld.py``; default the
            packaged ``emerdiff_lab/weights/toyworld.safetensors``.
        random_weights: build the same architecture with seeded random UNet weights instead (the
            evaluation's control). The text encoder is the trained file's, when it exists, so
            that both models see the same condition.
        seed: UNet weight seed when ``random_weights``.
    """
    import copy

    from ..models import (TOYWORLD_MODEL_ID, EmerDiffModel, _moved, ddpm_scheduler_from_config,
                          resolve_device, resolve_dtype)

    device, dtype = resolve_device(device), resolve_dtype(dtype)
    if random_weights:
        unet = build_unet(seed).eval().requires_grad_(False)
        text_encoder, tokenizer = build_text_encoder()
    else:
        unet, text_encoder, tokenizer = _components_cpu(str(weights or WEIGHTS_PATH))
        # Copies, so that moving one loaded model to a device or dtype never moves another.
        unet, text_encoder = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    return EmerDiffModel(
        unet=_moved(unet, device, dtype), vae=None,
        text_encoder=_moved(text_encoder, device, dtype), tokenizer=tokenizer,
        scheduler=ddpm_scheduler_from_config(SCHEDULER_CONFIG), device=device, dtype=dtype,
        default_config=default_config(),
        model_id=TOYWORLD_MODEL_ID if not random_weights else f"{TOYWORLD_MODEL_ID}-random{seed}",
        random_weights=random_weights)
