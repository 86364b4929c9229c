"""The offline "tiny-flux" model: FLUX.1-dev's architecture at small widths, random weights.

It has FLUX.1-dev's layout: a ``FluxTransformer2DModel`` (2 double-stream and 2 single-stream
blocks, 4 heads x 16, 3-axis RoPE split (4, 6, 6) as dev's (16, 56, 56), guidance embedding,
64-channel packed input), a CLIP text encoder whose pooled output is the pooled projection, a
T5 encoder of 512 tokens as dev's, a 16-channel 8x VAE with FLUX's ``scaling_factor`` and
``shift_factor``, and FLUX.1-dev's ``FlowMatchEulerDiscreteScheduler`` config (dynamic
shifting). The tokenizers are built in code, so nothing is downloaded. About 0.49 M parameters
in the transformer; every EmerDiff function runs on it as on FLUX.1-dev, on a CPU, in seconds.
Its weights are random, so it shows mechanics, never semantics.
"""

from __future__ import annotations

import copy
import functools

import torch

from .architectures import Flux
from .config import EmerDiffConfig
from .core import EmerDiffModel, moved, register_model
from .tiny import _byte_level_clip_tokenizer, build_tiny_vae
from .tiny_pixart import _character_t5_tokenizer

MODEL_ID = "tiny-flux"

# FLUX.1-dev's scheduler config as published: the shift follows the number of image tokens.
FLUX_DEV_SCHEDULER_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler",
                             "num_train_timesteps": 1000, "shift": 3.0,
                             "use_dynamic_shifting": True, "base_shift": 0.5, "max_shift": 1.15,
                             "base_image_seq_len": 256, "max_image_seq_len": 4096}
# FLUX.1's VAE: 16 latent channels, scaling 0.3611, shift 0.1159, no quant convs, force_upcast.
FLUX_VAE_CONFIG = {"latent_channels": 16, "scaling_factor": 0.3611, "shift_factor": 0.1159,
                   "use_quant_conv": False, "use_post_quant_conv": False, "force_upcast": True}

_HEADS, _HEAD_DIM = 4, 16     # FLUX.1: 24 x 128 = 3072
_ROPE_AXES = (4, 6, 6)        # FLUX.1: (16, 56, 56), summing to the head width
_CLIP_WIDTH = 16              # FLUX.1: 768 (CLIP ViT-L/14, pooled)
_T5_WIDTH = 64                # FLUX.1: 4096 (T5-XXL)
_OUTPUT_SCALE = 0.25          # of the output projection's default init (as tiny-sd3's)
NATIVE_IMAGE_SIZE = 256       # 32x32 latents, 16x16 tokens


def build_tiny_flux_components(seed: int = 0) -> dict:
    """Builds the tiny FLUX's parts on the CPU in float32 with seeded random weights.

    Returns:
        dict with ``transformer`` (FluxTransformer2DModel: 2 double + 2 single blocks, 4 heads
        x 16, guidance embedding), ``vae`` (AutoencoderKL, 8x, 16 channels, FLUX's scaling and
        shift), ``text_encoder`` (CLIPTextModel, width 16), ``text_encoder_2``
        (T5EncoderModel, width 64), their tokenizers and ``scheduler_config``. The same seed
        gives bit-identical weights.
    """
    from diffusers import FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    clip_tokenizer, t5_tokenizer = _byte_level_clip_tokenizer(), _character_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=2, num_single_layers=2,
            attention_head_dim=_HEAD_DIM, num_attention_heads=_HEADS, joint_attention_dim=_T5_WIDTH,
            pooled_projection_dim=_CLIP_WIDTH, guidance_embeds=True, axes_dims_rope=_ROPE_AXES)
        # A full-size random output projection makes a predictor whose float rounding grows from
        # step to step (as for tiny-sd3); FLUX, like SD3, starts training from a zero one.
        with torch.no_grad():
            transformer.proj_out.weight.mul_(_OUTPUT_SCALE)
            transformer.proj_out.bias.mul_(_OUTPUT_SCALE)
        vae = build_tiny_vae(**FLUX_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(clip_tokenizer), hidden_size=_CLIP_WIDTH,
            intermediate_size=2 * _CLIP_WIDTH, num_hidden_layers=2, num_attention_heads=2,
            max_position_embeddings=77, bos_token_id=clip_tokenizer.bos_token_id,
            eos_token_id=clip_tokenizer.eos_token_id, pad_token_id=clip_tokenizer.pad_token_id))
        text_encoder_2 = T5EncoderModel(T5Config(
            vocab_size=len(t5_tokenizer), d_model=_T5_WIDTH, d_kv=8, d_ff=2 * _T5_WIDTH,
            num_layers=2, num_heads=4, relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0))
    for module in (transformer, vae, text_encoder, text_encoder_2):
        module.eval().requires_grad_(False)
    return {"transformer": transformer, "vae": vae, "text_encoder": text_encoder,
            "tokenizer": clip_tokenizer, "text_encoder_2": text_encoder_2,
            "tokenizer_2": t5_tokenizer, "scheduler_config": dict(FLUX_DEV_SCHEDULER_CONFIG)}


@functools.lru_cache(maxsize=2)
def tiny_flux_components_cpu(seed: int) -> dict:
    """:func:`build_tiny_flux_components`, built once per seed (callers copy what they move)."""
    return build_tiny_flux_components(seed)


def tiny_flux_pipeline(seed: int = 0):
    """The tiny FLUX as a diffusers ``FluxPipeline`` with its flow scheduler: for
    ``from_pipeline``, CPU-offload and ``save_pretrained`` round trips. Fresh module copies."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline

    parts = {k: copy.deepcopy(v) for k, v in tiny_flux_components_cpu(seed).items()}
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(parts.pop("scheduler_config"))
    return FluxPipeline(**parts, scheduler=scheduler)


def load_tiny_flux(device: torch.device, dtype: torch.dtype, seed: int = 0) -> EmerDiffModel:
    """The tiny FLUX as an :class:`EmerDiffModel` (``load_model("tiny-flux")``); 256 px native
    (16x16 tokens), any multiple of 16 px works (128 px in the tests)."""
    parts = tiny_flux_components_cpu(seed)
    architecture = Flux(image_size=NATIVE_IMAGE_SIZE)
    scheduler = architecture.scheduler(parts["scheduler_config"])
    # Copies, so that moving one loaded model to a device or dtype never moves another.
    networks = {name: moved(copy.deepcopy(parts[source]), device, dtype)
                for name, source in (("unet", "transformer"), ("vae", "vae"),
                                     ("text_encoder", "text_encoder"),
                                     ("text_encoder_2", "text_encoder_2"))}
    return EmerDiffModel(
        **networks, tokenizer=parts["tokenizer"], tokenizer_2=parts["tokenizer_2"],
        scheduler=scheduler, device=device, dtype=dtype,
        default_config=architecture.default_config(scheduler, EmerDiffConfig(num_masks=8)),
        model_id=MODEL_ID, random_weights=True, architecture=architecture,
    )


register_model(MODEL_ID, load_tiny_flux)
