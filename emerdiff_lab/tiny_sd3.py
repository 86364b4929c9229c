"""The offline "tiny-sd3" model: SD3.5's architecture at small widths, random weights.

It has SD3.5-medium's layout: an ``SD3Transformer2DModel`` (patch size 2, three joint blocks, the
last one ``context_pre_only``, dual attention ``attn2`` in block 0 as in SD3.5's blocks 0-12, RMS
q/k norm, a position-embedding table bounding the image size), two CLIP text encoders with
projections (pooled vector) and a T5 encoder whose embeddings are joined as SD3's pipeline joins
them (CLIPs zero-padded to T5's width, 77 + 256 tokens), a 16-channel 8x VAE with SD3's
``scaling_factor`` and ``shift_factor``, and SD3's ``FlowMatchEulerDiscreteScheduler`` config
(shift 3). The tokenizers are built in code, so nothing is downloaded. About 0.5 M parameters in
the transformer; every EmerDiff function runs on it as on SD3, on a CPU, in seconds. Its weights
are random, so it shows mechanics, never semantics.
"""

from __future__ import annotations

import copy
import functools

import torch

from .architectures import StableDiffusion3
from .config import EmerDiffConfig
from .core import EmerDiffModel, moved, register_model
from .tiny import _byte_level_clip_tokenizer, build_tiny_vae
from .tiny_pixart import _character_t5_tokenizer

MODEL_ID = "tiny-sd3"

# SD3 / SD3.5's scheduler config as published.
SD3_SCHEDULER_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler",
                        "num_train_timesteps": 1000, "shift": 3.0}
# SD3's VAE: 16 latent channels, scaling 1.5305, shift 0.0609, no quant convs, force_upcast.
SD3_VAE_CONFIG = {"latent_channels": 16, "scaling_factor": 1.5305, "shift_factor": 0.0609,
                  "use_quant_conv": False, "use_post_quant_conv": False, "force_upcast": True}

_HEADS, _HEAD_DIM = 4, 16     # SD3.5-medium: 24 x 64 = 1536
_NUM_LAYERS = 3               # SD3.5-medium: 24 (the default layer is block num_layers // 2)
_CLIP_WIDTHS = (16, 32)       # SD3: 768 (CLIP-L) and 1280 (bigG), pooled the same widths
_T5_WIDTH = 64                # SD3: 4096 (T5-XXL)
_OUTPUT_SCALE = 0.25          # of the output projection's default init (see the build function)


def _clip_with_projection(tokenizer, width: int):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    return CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
        projection_dim=width, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))


def build_tiny_sd3_components(seed: int = 0) -> dict:
    """Builds the tiny SD3's parts on the CPU in float32 with seeded random weights.

    Returns:
        dict with ``transformer`` (SD3Transformer2DModel: 3 blocks, 4 heads x 16, patch 2,
        latent 32x32 native (256 px, 16x16 tokens), position table 48 (up to 768 px), dual
        attention in block 0, RMS q/k norm), ``vae`` (AutoencoderKL, 8x, 16 channels, SD3's
        scaling and shift), ``text_encoder``/``text_encoder_2`` (CLIPTextModelWithProjection,
        widths 16 and 32), ``text_encoder_3`` (T5EncoderModel, width 64), their tokenizers and
        ``scheduler_config``. The same seed gives bit-identical weights.
    """
    from diffusers import SD3Transformer2DModel
    from transformers import T5Config, T5EncoderModel

    clip_tokenizer, t5_tokenizer = _byte_level_clip_tokenizer(), _character_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = SD3Transformer2DModel(
            sample_size=32, patch_size=2, in_channels=16, out_channels=16,
            num_layers=_NUM_LAYERS, attention_head_dim=_HEAD_DIM, num_attention_heads=_HEADS,
            joint_attention_dim=_T5_WIDTH, caption_projection_dim=_HEADS * _HEAD_DIM,
            pooled_projection_dim=sum(_CLIP_WIDTHS), pos_embed_max_size=48,
            dual_attention_layers=(0,), qk_norm="rms_norm")
        # As PixArt's miniature: the default init of the output projection makes a predictor
        # whose float rounding grows from step to step; SD3 trains from a zero one.
        with torch.no_grad():
            transformer.proj_out.weight.mul_(_OUTPUT_SCALE)
            transformer.proj_out.bias.mul_(_OUTPUT_SCALE)
        vae = build_tiny_vae(**SD3_VAE_CONFIG)
        text_encoder = _clip_with_projection(clip_tokenizer, _CLIP_WIDTHS[0])
        text_encoder_2 = _clip_with_projection(clip_tokenizer, _CLIP_WIDTHS[1])
        text_encoder_3 = T5EncoderModel(T5Config(
            vocab_size=len(t5_tokenizer), d_model=_T5_WIDTH, d_kv=8, d_ff=2 * _T5_WIDTH,
            num_layers=2, num_heads=4, relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0))
    for module in (transformer, vae, text_encoder, text_encoder_2, text_encoder_3):
        module.eval().requires_grad_(False)
    return {"transformer": transformer, "vae": vae, "text_encoder": text_encoder,
            "tokenizer": clip_tokenizer, "text_encoder_2": text_encoder_2,
            "tokenizer_2": clip_tokenizer, "text_encoder_3": text_encoder_3,
            "tokenizer_3": t5_tokenizer, "scheduler_config": dict(SD3_SCHEDULER_CONFIG)}


@functools.lru_cache(maxsize=2)
def tiny_sd3_components_cpu(seed: int) -> dict:
    """:func:`build_tiny_sd3_components`, built once per seed (callers copy what they move)."""
    return build_tiny_sd3_components(seed)


def tiny_sd3_pipeline(seed: int = 0):
    """The tiny SD3 as a diffusers ``StableDiffusion3Pipeline`` with its flow scheduler: for
    ``from_pipeline`` and ``save_pretrained`` round trips. Its modules are fresh copies."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    parts = {k: copy.deepcopy(v) for k, v in tiny_sd3_components_cpu(seed).items()}
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(parts.pop("scheduler_config"))
    return StableDiffusion3Pipeline(**parts, scheduler=scheduler)


def load_tiny_sd3(device: torch.device, dtype: torch.dtype, seed: int = 0) -> EmerDiffModel:
    """The tiny SD3 as an :class:`EmerDiffModel` (``load_model("tiny-sd3")``); 256 px native
    (16x16 tokens), any multiple of 16 up to 768 px works (128 px in the tests)."""
    parts = tiny_sd3_components_cpu(seed)
    architecture = StableDiffusion3()
    scheduler = architecture.scheduler(parts["scheduler_config"])
    # Copies, so that moving one loaded model to a device or dtype never moves another.
    networks = {name: moved(copy.deepcopy(parts[source]), device, dtype)
                for name, source in (("unet", "transformer"), ("vae", "vae"),
                                     ("text_encoder", "text_encoder"),
                                     ("text_encoder_2", "text_encoder_2"),
                                     ("text_encoder_3", "text_encoder_3"))}
    return EmerDiffModel(
        **networks, tokenizer=parts["tokenizer"], tokenizer_2=parts["tokenizer_2"],
        tokenizer_3=parts["tokenizer_3"], scheduler=scheduler, device=device, dtype=dtype,
        default_config=architecture.default_config(scheduler, EmerDiffConfig(num_masks=8)),
        model_id=MODEL_ID, random_weights=True, architecture=architecture,
    )


register_model(MODEL_ID, load_tiny_sd3)
