"""The offline "tiny" model: Stable Diffusion 1.x's architecture at small widths, random weights.

It has SD 1.x's block types (three cross-attention down blocks, a cross-attention mid block,
three cross-attention up blocks, ``layers_per_block=2``), an 8x VAE and a small CLIP text encoder
with a byte-level tokenizer generated in code, so every EmerDiff function runs on it exactly as on
SD, on a CPU, in seconds, with no download. Its weights are random: it shows mechanics, never
semantics, and everything it produces must be labelled as random-weight output.
"""

from __future__ import annotations

import copy
import functools
import json
import tempfile
from pathlib import Path

import torch

from .config import EmerDiffConfig
from .core import EmerDiffModel, ddpm_scheduler_from_config, moved, register_model

MODEL_ID = "tiny"

# SD 1.x's noise schedule (scaled_linear betas 0.00085 -> 0.012, steps_offset 1), so that the tiny
# model walks the same 981, 961, ..., 1 timesteps as the real one.
SD_SCHEDULER_CONFIG = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
}

_TEXT_WIDTH = 32
_MAX_TOKENS = 77


def build_tiny_vae(**config):
    """The tiny models' VAE: an 8x ``AutoencoderKL`` (4 latent channels, widths 16-32) with
    random weights drawn from torch's current random state; ``config`` overrides e.g.
    ``scaling_factor`` or ``force_upcast`` (the SDXL and PixArt miniatures copy theirs) or
    ``latent_channels`` (tiny-sd3: 16)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(**{
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (16, 32, 32, 32),
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 16,
        **config,
    })


def build_tiny_components(seed: int = 0) -> dict:
    """Builds the tiny model's parts on the CPU in float32 with seeded random weights.

    Returns:
        dict with ``unet`` (UNet2DConditionModel, latent 4 channels), ``vae`` (AutoencoderKL, 8x),
        ``text_encoder`` (CLIPTextModel, width 32), ``tokenizer`` (CLIPTokenizer, 514 tokens) and
        ``scheduler_config`` (dict). The same seed gives bit-identical weights.
    """
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=32,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=(32, 64, 64, 64),
            layers_per_block=2,
            attention_head_dim=2,  # SD 1.x's config uses this name for the number of heads
            cross_attention_dim=_TEXT_WIDTH,
            norm_num_groups=16,
        )
        vae = build_tiny_vae()
        tokenizer = _byte_level_clip_tokenizer()
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=_TEXT_WIDTH,
            intermediate_size=2 * _TEXT_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=_MAX_TOKENS,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        ))
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
            "scheduler_config": dict(SD_SCHEDULER_CONFIG)}


def _byte_unicode_alphabet() -> list[str]:
    """The 256 printable stand-ins that byte-level BPE (GPT-2, CLIP) uses for the 256 bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    alphabet, extra = [], 0
    for byte in range(256):
        if byte in printable:
            alphabet.append(chr(byte))
        else:
            alphabet.append(chr(256 + extra))
            extra += 1
    return alphabet


def _byte_level_clip_tokenizer():
    """A working CLIPTokenizer with no merges: every byte of a word is one token.

    The vocabulary (bytes, bytes ending a word, start and end tokens) is written to a temporary
    folder and read back with ``from_pretrained``, the loading path that transformers 5.x keeps
    correct (building it from file arguments can silently give wrong ids).
    """
    return clip_tokenizer_from_vocab(byte_level_tokens())


def byte_level_tokens() -> list[str]:
    """The byte-level vocabulary in id order: 256 bytes, 256 word-final bytes, start, end."""
    alphabet = _byte_unicode_alphabet()
    return alphabet + [c + "</w>" for c in alphabet] + ["<|startoftext|>", "<|endoftext|>"]


def clip_tokenizer_from_vocab(tokens: list[str], merges: list[tuple[str, str]] = ()):
    """A CLIPTokenizer whose token ``i`` is ``tokens[i]``, with BPE ``merges`` in rank order
    (none: every byte of a word is one token). ``tokens`` must hold the start and end tokens."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="emerdiff-tiny-tokenizer-") as folder:
        root = Path(folder)
        (root / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
        (root / "merges.txt").write_text(
            "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
        (root / "tokenizer_config.json").write_text(json.dumps({
            "model_max_length": _MAX_TOKENS,
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "unk_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
        }))
        return CLIPTokenizer.from_pretrained(folder)


@functools.lru_cache(maxsize=4)
def tiny_components_cpu(seed: int) -> dict:
    """:func:`build_tiny_components`, built once per seed (callers copy what they move)."""
    return build_tiny_components(seed)


def load_tiny(device: torch.device, dtype: torch.dtype, seed: int = 0) -> EmerDiffModel:
    """The tiny model as an :class:`EmerDiffModel` (``load_model("tiny")``)."""
    parts = tiny_components_cpu(seed)
    # Copies, so that moving one loaded tiny model to a device or dtype never moves another.
    unet, vae, text_encoder = (moved(copy.deepcopy(parts[n]), device, dtype)
                               for n in ("unet", "vae", "text_encoder"))
    return EmerDiffModel(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=parts["tokenizer"],
        scheduler=ddpm_scheduler_from_config(parts["scheduler_config"]), device=device,
        dtype=dtype, default_config=EmerDiffConfig(num_masks=8), model_id=MODEL_ID,
        random_weights=True,
    )


register_model(MODEL_ID, load_tiny)
