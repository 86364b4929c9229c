"""The offline "tiny-sdxl" model: SDXL's architecture at small widths, random weights.

It has SDXL's layout: three UNet levels (a plain down block, then two cross-attention down
blocks; up blocks mirrored), several transformer blocks per attention module in the
lowest-resolution levels (``transformer_layers_per_block=(1, 2, 3)``; SDXL: (1, 2, 10)), linear
projections, the ``text_time`` added embedding (pooled text embedding + six size ids), two CLIP
text encoders whose penultimate hidden states are concatenated (the second with a projection that
gives the pooled embedding), an 8x VAE with SDXL's ``scaling_factor`` and ``force_upcast``, and
SDXL's Euler scheduler config (scaled-linear betas, no ``set_alpha_to_one``). Every EmerDiff
function runs on it as on SDXL, on a CPU, in seconds; its weights are random, so it shows
mechanics, never semantics.
"""

from __future__ import annotations

import copy
import functools

import torch

from .config import EmerDiffConfig
from .core import EmerDiffModel, ddpm_scheduler_from_config, moved, register_model
from .tiny import _byte_level_clip_tokenizer, build_tiny_vae

MODEL_ID = "tiny-sdxl"

# SDXL base 1.0's scheduler config: Euler, SD's scaled-linear betas, and no set_alpha_to_one or
# clip_sample (ddpm_scheduler_from_config supplies SD's values).
SDXL_SCHEDULER_CONFIG = {
    "_class_name": "EulerDiscreteScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
}

_WIDTH_1, _WIDTH_2 = 16, 32       # SDXL: 768 (CLIP ViT-L) and 1280 (OpenCLIP ViT-bigG)
_PROJECTION = 32                  # SDXL: 1280, the pooled embedding's width
_TIME_EMBED = 8                   # SDXL: 256 per size id
_MAX_TOKENS = 77


def build_tiny_sdxl_components(seed: int = 0) -> dict:
    """Builds the tiny SDXL's parts on the CPU in float32 with seeded random weights.

    Returns:
        dict with ``unet`` (UNet2DConditionModel, ``addition_embed_type="text_time"``),
        ``vae`` (AutoencoderKL, 8x, ``force_upcast``), ``text_encoder`` (CLIPTextModel, width
        16), ``text_encoder_2`` (CLIPTextModelWithProjection, width 32, projection 32),
        ``tokenizer``, ``tokenizer_2`` (byte-level CLIP tokenizers) and ``scheduler_config``.
        The same seed gives bit-identical weights.
    """
    from diffusers import UNet2DConditionModel
    from transformers import (CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection)

    tokenizer = _byte_level_clip_tokenizer()
    tokenizer_2 = _byte_level_clip_tokenizer()

    def text_config(width, **extra):
        return CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=_MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, **extra)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64, 64),
            layers_per_block=2,
            transformer_layers_per_block=(1, 2, 3),
            attention_head_dim=(2, 4, 4),  # SDXL's config: heads per level (5, 10, 20)
            use_linear_projection=True,
            cross_attention_dim=_WIDTH_1 + _WIDTH_2,
            addition_embed_type="text_time",
            addition_time_embed_dim=_TIME_EMBED,
            projection_class_embeddings_input_dim=6 * _TIME_EMBED + _PROJECTION,
            norm_num_groups=16,
        )
        vae = build_tiny_vae(scaling_factor=0.13025, force_upcast=True)  # SDXL's VAE scaling
        text_encoder = CLIPTextModel(text_config(_WIDTH_1))
        text_encoder_2 = CLIPTextModelWithProjection(text_config(_WIDTH_2,
                                                                 projection_dim=_PROJECTION))
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval().requires_grad_(False)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder,
            "text_encoder_2": text_encoder_2, "tokenizer": tokenizer, "tokenizer_2": tokenizer_2,
            "scheduler_config": dict(SDXL_SCHEDULER_CONFIG)}


@functools.lru_cache(maxsize=2)
def tiny_sdxl_components_cpu(seed: int) -> dict:
    """:func:`build_tiny_sdxl_components`, built once per seed (callers copy what they move)."""
    return build_tiny_sdxl_components(seed)


def tiny_sdxl_pipeline(seed: int = 0):
    """The tiny SDXL as a diffusers ``StableDiffusionXLPipeline`` (with its Euler scheduler):
    for ``from_pipeline`` and ``save_pretrained`` round trips. Its modules are fresh copies."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    parts = {k: copy.deepcopy(v) for k, v in tiny_sdxl_components_cpu(seed).items()}
    scheduler = EulerDiscreteScheduler.from_config(parts.pop("scheduler_config"))
    return StableDiffusionXLPipeline(**parts, scheduler=scheduler, add_watermarker=False)


def load_tiny_sdxl(device: torch.device, dtype: torch.dtype, seed: int = 0) -> EmerDiffModel:
    """The tiny SDXL as an :class:`EmerDiffModel` (``load_model("tiny-sdxl")``); 256 px native,
    any multiple of 32 works (128 px in the tests)."""
    parts = tiny_sdxl_components_cpu(seed)
    # Copies, so that moving one loaded model to a device or dtype never moves another.
    networks = {n: moved(copy.deepcopy(parts[n]), device, dtype)
                for n in ("unet", "vae", "text_encoder", "text_encoder_2")}
    return EmerDiffModel(
        **networks, tokenizer=parts["tokenizer"], tokenizer_2=parts["tokenizer_2"],
        scheduler=ddpm_scheduler_from_config(parts["scheduler_config"]), device=device,
        dtype=dtype, default_config=EmerDiffConfig(num_masks=8), model_id=MODEL_ID,
        random_weights=True,
    )


register_model(MODEL_ID, load_tiny_sdxl)
