"""The ToyWorld model: a small pixel-space diffusion UNet trained by this project on generated
scenes.

Architecture (64 px, RGB in [-1, 1] is its own latent, no VAE):
resolution 64 -> 32 -> 16 -> 8 with plain residual blocks at 64 and 32, transformer blocks
(self- and cross-attention) at 16 (down and up) and in the 8x8 middle block. The
lowest-resolution up block with cross-attention is therefore the 16x16 one, so EmerDiff reads
and modulates 16x16 features (4x4-pixel cells), the same cell-to-image ratio as SD's 16x16
layers at 64x64 latents.
Conditioning is fixed: the empty prompt's embedding from a small seeded CLIP text encoder, computed
once for training and stored in the weight file (the loaded model's text encoder returns it).
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch

from ..config import EmerDiffConfig
from ..core import (EmerDiffModel, ddpm_scheduler_from_config, moved, register_model,
                    resolve_device, resolve_dtype)
from ..tiny import SD_SCHEDULER_CONFIG

IMAGE_SIZE = 64
TOYWORLD_MODEL_ID = "toyworld"
TEXT_WIDTH = 32
WEIGHTS_PATH = Path(__file__).resolve().parents[1] / "weights" / "toyworld.safetensors"

# The SD 1.x DDPM schedule (1000 steps, steps_offset 1: 50-step timesteps 981, 961, ..., 1), so
# that timesteps in configs mean the same as for SD and the tiny model.
SCHEDULER_CONFIG = SD_SCHEDULER_CONFIG

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
    return text_encoder(null_ids(tokenizer))[0].float()


class NullTextEncoder(torch.nn.Module):
    """A text encoder with one output: the stored empty-prompt embedding (ToyWorld is
    unconditional).

    Called like a transformers text model: ``encoder(input_ids)[0]`` is (B, 77, 32). Any ids other
    than the empty prompt's raise ValueError, so a prompt is never silently ignored. Storing the
    embedding itself (5 KB) instead of a CLIP model keeps the weight file under 8 MB and the
    condition independent of any random-number stream.
    """

    def __init__(self, embedding: torch.Tensor, null_ids: torch.Tensor):
        super().__init__()
        if (embedding.ndim != 3 or embedding.shape[0] != 1
                or null_ids.shape != (1, embedding.shape[1])):
            raise ValueError(f"expected a (1, T, C) embedding and (1, T) ids, got "
                             f"{tuple(embedding.shape)} and {tuple(null_ids.shape)}")
        # A parameter, not a buffer, so that device/dtype moves and ``parameters()`` see it.
        self.embedding = torch.nn.Parameter(embedding.clone(), requires_grad=False)
        self.register_buffer("null_ids", null_ids.clone().long())

    def forward(self, input_ids: torch.Tensor, *args, **kwargs) -> tuple[torch.Tensor]:
        if not torch.equal(input_ids.to(self.null_ids.device),
                           self.null_ids.expand(input_ids.shape[0], -1)):
            raise ValueError("the ToyWorld model is unconditional: it was trained on the empty "
                             "prompt only; use prompt=''")
        return (self.embedding.expand(input_ids.shape[0], -1, -1),)


def null_ids(tokenizer) -> torch.Tensor:
    """(1, 77) int64 token ids of the empty prompt."""
    return tokenizer("", padding="max_length", truncation=True,
                     max_length=tokenizer.model_max_length, return_tensors="pt").input_ids


def state_dict_for_saving(unet, context: torch.Tensor) -> dict:
    """The UNet's weights (keys ``unet.*``) and the (1, 77, 32) condition (``null_embedding``),
    float16, in one flat dict for safetensors."""
    tensors = {f"unet.{k}": v for k, v in unet.state_dict().items()}
    tensors["null_embedding"] = context
    return {k: v.detach().to(torch.float16).contiguous() for k, v in tensors.items()}


@functools.lru_cache(maxsize=2)
def _components_cpu(path: str) -> tuple:
    from safetensors.torch import load_file

    from ..tiny import _byte_level_clip_tokenizer

    if not Path(path).is_file():
        raise FileNotFoundError(f"ToyWorld weights not found at {path}; they ship with the "
                                f"package (emerdiff_lab/weights/toyworld.safetensors) or are "
                                f"written by scripts/train_toyworld.py --export")
    tensors = load_file(path)
    if "null_embedding" not in tensors:
        raise ValueError(f"{path} holds no 'null_embedding': not a ToyWorld weight file")
    unet = build_unet()
    part = {k[len("unet."):]: v.float() for k, v in tensors.items() if k.startswith("unet.")}
    missing, unexpected = unet.load_state_dict(part, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not match the ToyWorld architecture: missing "
                         f"{missing[:5]}, unexpected {unexpected[:5]}")
    unet.eval().requires_grad_(False)
    tokenizer = _byte_level_clip_tokenizer()
    text_encoder = NullTextEncoder(tensors["null_embedding"].float(), null_ids(tokenizer))
    return unet, text_encoder, tokenizer


def load_toyworld(device="cpu", dtype=torch.float32, *, weights: str | Path | None = None,
                  random_weights: bool = False, seed: int = 0):
    """The trained ToyWorld model as an :class:`~emerdiff_lab.EmerDiffModel`; offline, seconds.

    Args:
        device, dtype: where and in which precision the networks run (torch objects or strings).
        weights: a safetensors file written by ``scripts/train_toyworld.py``; default the
            packaged ``emerdiff_lab/weights/toyworld.safetensors``.
        random_weights: build the same architecture with seeded random UNet weights instead (the
            evaluation's control); the condition is still the weight file's, so that both models
            see the same one.
        seed: UNet weight seed when ``random_weights``.
    """
    import copy

    device, dtype = resolve_device(device), resolve_dtype(dtype)
    unet, text_encoder, tokenizer = _components_cpu(str(weights or WEIGHTS_PATH))
    # Copies, so that moving one loaded model to a device or dtype never moves another.
    unet, text_encoder = copy.deepcopy(unet), copy.deepcopy(text_encoder)
    if random_weights:
        unet = build_unet(seed).eval().requires_grad_(False)
    if device.type == "cpu":  # its small convolutions run faster in NHWC there (BENCHMARKS.md)
        unet.to(memory_format=torch.channels_last)
    return EmerDiffModel(
        unet=moved(unet, device, dtype), vae=None,
        text_encoder=moved(text_encoder, device, dtype), tokenizer=tokenizer,
        scheduler=ddpm_scheduler_from_config(SCHEDULER_CONFIG), device=device, dtype=dtype,
        default_config=default_config(),
        model_id=TOYWORLD_MODEL_ID if not random_weights else f"{TOYWORLD_MODEL_ID}-random{seed}",
        random_weights=random_weights)


register_model(TOYWORLD_MODEL_ID,
               lambda device, dtype, seed: load_toyworld(device=device, dtype=dtype),
               aliases=("toyworld-64",))  # "toyworld-64": the same 64 px model
