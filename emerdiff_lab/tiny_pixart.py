"""The offline "tiny-pixart" model: PixArt-α's architecture at small widths, random weights.

It has PixArt-α's layout: a ``PixArtTransformer2DModel`` (patch size 2, ``ada_norm_single``
blocks with self- and cross-attention, learned variance: 8 output channels for 4 latent ones,
a caption projection from T5's width, and the 1024 px model's ``resolution`` / ``aspect_ratio``
inputs), a T5 encoder whose last hidden states and attention mask condition it, an 8x VAE with
SD's ``scaling_factor``, and PixArt's scheduler config (DPM-Solver on linear betas 1e-4 -> 0.02,
"linspace" spacing). The T5 tokenizer is built in code from a small character vocabulary, so
nothing is downloaded. Every EmerDiff function runs on it as on PixArt, on a CPU, in seconds;
its weights are random, so it shows mechanics, never semantics.
"""

from __future__ import annotations

import copy
import functools
import string
import tempfile

import torch

from .architectures import PixArt
from .config import EmerDiffConfig
from .core import EmerDiffModel, moved, register_model
from .tiny import build_tiny_vae

MODEL_ID = "tiny-pixart"

# PixArt-XL-2-1024-MS's scheduler config (the fields DDIMScheduler reads): linear betas, epsilon
# prediction, "linspace" spacing without offset (the architecture switches to leading spacing).
PIXART_SCHEDULER_CONFIG = {
    "_class_name": "DPMSolverMultistepScheduler",
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "num_train_timesteps": 1000,
    "prediction_type": "epsilon",
    "steps_offset": 0,
    "timestep_spacing": "linspace",
    "thresholding": False,
    "algorithm_type": "dpmsolver++",
    "solver_order": 2,
    "solver_type": "midpoint",
    "lower_order_final": True,
    "use_karras_sigmas": False,
    "variance_type": None,
}

_T5_WIDTH = 32             # PixArt: 4096 (T5 v1.1 XXL)
_HEADS, _HEAD_DIM = 2, 12  # PixArt: 16 x 72 = 1152; a multiple of 3 (size ids take a third)
_NUM_LAYERS = 4            # PixArt: 28 (the default layer is block num_layers // 2)
_OUTPUT_SCALE = 0.25       # of the output projection's default init (see the build function)


def _character_t5_tokenizer():
    """A working T5 tokenizer with one token per character (and T5's pad, eos, unk ids 0, 1,
    2), built from a vocabulary list and read back with ``from_pretrained``, the loading path a
    saved pipeline uses."""
    from transformers import T5Tokenizer

    pieces = ["<pad>", "</s>", "<unk>", "\u2581"] + list(string.ascii_lowercase + string.digits
                                                          + string.punctuation)
    tokenizer = T5Tokenizer(vocab=[(piece, 0.0 if i < 3 else -1.0)
                                   for i, piece in enumerate(pieces)], extra_ids=0)
    with tempfile.TemporaryDirectory(prefix="emerdiff-tiny-t5-") as folder:
        tokenizer.save_pretrained(folder)
        return T5Tokenizer.from_pretrained(folder)


def build_tiny_pixart_components(seed: int = 0) -> dict:
    """Builds the tiny PixArt's parts on the CPU in float32 with seeded random weights.

    Returns:
        dict with ``transformer`` (PixArtTransformer2DModel: 4 blocks, 2 heads x 12, patch 2,
        latent 8x8 native (64 px), 8 output channels, additional conditions on), ``vae``
        (AutoencoderKL, 8x), ``text_encoder`` (T5EncoderModel, width 32), ``tokenizer`` (a
        character T5 tokenizer) and ``scheduler_config``. The same seed gives bit-identical
        weights.
    """
    from diffusers import PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    tokenizer = _character_t5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = PixArtTransformer2DModel(
            num_attention_heads=_HEADS,
            attention_head_dim=_HEAD_DIM,
            in_channels=4,
            out_channels=8,  # epsilon and learned variance
            num_layers=_NUM_LAYERS,
            cross_attention_dim=_HEADS * _HEAD_DIM,
            sample_size=8,
            patch_size=2,
            caption_channels=_T5_WIDTH,
            use_additional_conditions=True,  # as the 1024 px α model (sample_size 128)
        )
        # PixArt (like DiT) starts training from a zero output layer; PyTorch's default init
        # gives a predictor so sensitive to its input that float rounding grows by ~13% per
        # DDPM step (7.8e-4 of the latents' scale after a 50-step reconstruction, against
        # 3.5e-5 with the output layer scaled by 1/4; the maps' size barely changes).
        with torch.no_grad():
            transformer.proj_out.weight.mul_(_OUTPUT_SCALE)
            transformer.proj_out.bias.mul_(_OUTPUT_SCALE)
        vae = build_tiny_vae(scaling_factor=0.18215)  # PixArt-α uses SD's VAE
        text_encoder = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer), d_model=_T5_WIDTH, d_kv=8, d_ff=2 * _T5_WIDTH,
            num_layers=2, num_heads=4, relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
            decoder_start_token_id=0))
    for module in (transformer, vae, text_encoder):
        module.eval().requires_grad_(False)
    return {"transformer": transformer, "vae": vae, "text_encoder": text_encoder,
            "tokenizer": tokenizer, "scheduler_config": dict(PIXART_SCHEDULER_CONFIG)}


@functools.lru_cache(maxsize=2)
def tiny_pixart_components_cpu(seed: int) -> dict:
    """:func:`build_tiny_pixart_components`, built once per seed (callers copy what they
    move)."""
    return build_tiny_pixart_components(seed)


def tiny_pixart_pipeline(seed: int = 0, pipeline: str = "PixArtAlphaPipeline"):
    """The tiny PixArt as a diffusers ``PixArtAlphaPipeline`` (or ``PixArtSigmaPipeline``)
    with its DPM-Solver scheduler: for ``from_pipeline`` and ``save_pretrained`` round trips.
    Its modules are fresh copies."""
    import diffusers

    if pipeline not in ("PixArtAlphaPipeline", "PixArtSigmaPipeline"):
        raise ValueError(f"pipeline must be 'PixArtAlphaPipeline' or 'PixArtSigmaPipeline', got "
                         f"{pipeline!r}")
    parts = {k: copy.deepcopy(v) for k, v in tiny_pixart_components_cpu(seed).items()}
    scheduler = diffusers.DPMSolverMultistepScheduler.from_config(parts.pop("scheduler_config"))
    return getattr(diffusers, pipeline)(**parts, scheduler=scheduler)


def load_tiny_pixart(device: torch.device, dtype: torch.dtype, seed: int = 0) -> EmerDiffModel:
    """The tiny PixArt-α as an :class:`EmerDiffModel` (``load_model("tiny-pixart")``); 64 px
    native (4x4 tokens), any multiple of 16 works."""
    parts = tiny_pixart_components_cpu(seed)
    architecture = PixArt("alpha")
    scheduler = architecture.scheduler(parts["scheduler_config"])
    # Copies, so that moving one loaded model to a device or dtype never moves another.
    return EmerDiffModel(
        unet=moved(copy.deepcopy(parts["transformer"]), device, dtype),
        vae=moved(copy.deepcopy(parts["vae"]), device, dtype),
        text_encoder=moved(copy.deepcopy(parts["text_encoder"]), device, dtype),
        tokenizer=parts["tokenizer"], scheduler=scheduler, device=device, dtype=dtype,
        default_config=architecture.default_config(scheduler, EmerDiffConfig(num_masks=8)),
        model_id=MODEL_ID, random_weights=True, architecture=architecture,
    )


register_model(MODEL_ID, load_tiny_pixart)
