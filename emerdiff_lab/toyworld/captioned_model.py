"""ToyWorld v2 (``load_model("toyworld-v2")``): ToyWorld-latent's VAE and UNet with a trained
text encoder, so that cross-attention attends to words (MODEL_CARD.md, issue 22).

- VAE: ToyWorld-latent's, frozen (128 px, factor 4).
- UNet: ToyWorld-latent's architecture, warm-started from its weights and trained on captioned
  scenes (:mod:`emerdiff_lab.toyworld.captions`) with 20% of the captions dropped to ``""``, so
  the empty prompt that EmerDiff inverts and modulates with stays a good unconditional model.
- Text encoder: a 2-layer width-32 ``CLIPTextModel`` (width = the UNet's ``cross_attention_dim``)
  trained jointly, started from the seeded encoder whose empty-prompt embedding ToyWorld-latent
  was trained on (so at step 0 the warm-started UNet sees exactly its old condition for ``""``).
- Tokenizer: the byte-level CLIP tokenizer (ids 0-513 unchanged) plus one token per word of the
  caption vocabulary, formed by BPE merges; any other text still tokenizes, byte by byte.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import torch

from ..config import EmerDiffConfig
from ..core import (EmerDiffModel, ddpm_scheduler_from_config, moved, register_model,
                    resolve_device, resolve_dtype)
from ..tiny import byte_level_tokens, clip_tokenizer_from_vocab
from .captions import VOCABULARY
from .latent_model import SCHEDULER_CONFIG, _load_part, build_unet, build_vae
from .model import build_text_encoder

MODEL_ID = "toyworld-v2"
WEIGHTS_PATH = Path(__file__).resolve().parents[1] / "weights" / "toyworld_v2.safetensors"
NEW_TOKEN_INIT_STD = 0.02   # CLIP's initialiser range for token embeddings


def word_merges(words) -> tuple[list[str], list[tuple[str, str]]]:
    """``(tokens, merges)`` that make each word one token: the prefixes of each word as tokens
    and the merges that grow them left to right, longest words first (so that a shorter word's
    merge never fires inside a longer word before the longer word's own merges)."""
    tokens, merges = [], []
    for word in sorted(words, key=lambda w: (-len(w), w)):
        pieces = [*word[:-1], word[-1] + "</w>"]
        prefix = pieces[0]
        for piece in pieces[1:]:
            merges.append((prefix, piece))
            prefix += piece
            tokens.append(prefix)
    return list(dict.fromkeys(tokens)), list(dict.fromkeys(merges))


@functools.lru_cache(maxsize=1)
def _tokenizer_cpu():
    base = byte_level_tokens()
    words, merges = word_merges(VOCABULARY)
    return clip_tokenizer_from_vocab(base + [t for t in words if t not in set(base)], merges)


def build_caption_tokenizer():
    """The v2 tokenizer: byte-level CLIP ids 0-513, then one token per vocabulary word (and the
    prefixes its merges pass through). A copy, so callers never share the tokenizer's cache."""
    return copy.deepcopy(_tokenizer_cpu())


def build_caption_text_encoder(seed: int = 0):
    """``(text_encoder, tokenizer)``: the seeded ToyWorld text encoder (float32, CPU, train mode,
    gradients on) with its token table grown to the v2 vocabulary; the byte, start and end rows
    are kept, so ``""`` embeds exactly as ToyWorld-latent's condition. New rows are seeded."""
    from transformers import CLIPTextConfig, CLIPTextModel

    old, _ = build_text_encoder(seed)
    tokenizer = build_caption_tokenizer()
    config = CLIPTextConfig(**{**old.config.to_dict(), "vocab_size": len(tokenizer)})
    text_encoder = CLIPTextModel(config)
    state = old.state_dict()
    key = next(k for k in state if k.endswith("token_embedding.weight"))  # prefix: version
    generator = torch.Generator().manual_seed(seed + 1)
    extra = torch.randn((len(tokenizer) - len(state[key]), state[key].shape[1]),
                        generator=generator)
    state[key] = torch.cat([state[key], extra * NEW_TOKEN_INIT_STD])
    text_encoder.load_state_dict(state)
    return text_encoder.train().requires_grad_(True), tokenizer


def default_config() -> EmerDiffConfig:
    """EmerDiff settings for ToyWorld v2, chosen on 8 validation scenes (never the test scenes)
    over t_m 281/481 x lambda 30/100 x blur 1/2/4/8 px by the boundary-aware rule of
    :data:`~.evaluation.SETTING_RULE` (MODEL_CARD.md: the sweep's table)."""
    return EmerDiffConfig(num_masks=6, feature_timestep=1, modulation_timestep=481,
                          modulation_strength=30.0, blur_sigma=2.0)


@functools.lru_cache(maxsize=2)
def _components_cpu(path: str) -> tuple:
    from safetensors.torch import load_file

    if not Path(path).is_file():
        raise FileNotFoundError(f"ToyWorld v2 weights not found at {path}; they ship with the "
                                f"package (emerdiff_lab/weights/toyworld_v2.safetensors)")
    tensors = load_file(path)
    if "vae_scaling_factor" not in tensors or not any(k.startswith("text_encoder.")
                                                      for k in tensors):
        raise ValueError(f"{path} holds no VAE scaling factor or text encoder: not a ToyWorld v2 "
                         f"weight file")
    vae = build_vae(scaling_factor=float(tensors["vae_scaling_factor"][0]))
    unet = build_unet()
    text_encoder, tokenizer = build_caption_text_encoder()
    for module, prefix in ((vae, "vae"), (unet, "unet"), (text_encoder, "text_encoder")):
        _load_part(module, tensors, prefix, path)
        module.eval().requires_grad_(False)
    return unet, vae, text_encoder, tokenizer


def load_toyworld_v2(device="cpu", dtype=torch.float32, *, weights: str | Path | None = None,
                     random_weights: bool = False, seed: int = 0) -> EmerDiffModel:
    """The trained ToyWorld v2 model as an :class:`~emerdiff_lab.EmerDiffModel`; offline.

    Args:
        device, dtype: where and in which precision the networks run.
        weights: a safetensors file written by ``scripts/train_toyworld_v2.py``; default the
            packaged ``emerdiff_lab/weights/toyworld_v2.safetensors``.
        random_weights: a seeded random-weight UNet instead of the trained one (the evaluation's
            control); the VAE and the text encoder stay the trained ones.
        seed: UNet weight seed when ``random_weights``.
    """
    device, dtype = resolve_device(device), resolve_dtype(dtype)
    parts = _components_cpu(str(weights or WEIGHTS_PATH))
    # Copies, so that moving one loaded model to a device or dtype never moves another.
    unet, vae, text_encoder = (copy.deepcopy(p) for p in parts[:3])
    if random_weights:
        unet = build_unet(seed).eval().requires_grad_(False)
    return EmerDiffModel(
        unet=moved(unet, device, dtype), vae=moved(vae, device, dtype),
        text_encoder=moved(text_encoder, device, dtype), tokenizer=copy.deepcopy(parts[3]),
        scheduler=ddpm_scheduler_from_config(SCHEDULER_CONFIG), device=device, dtype=dtype,
        default_config=default_config(),
        model_id=MODEL_ID if not random_weights else f"{MODEL_ID}-random{seed}",
        random_weights=random_weights)


register_model(MODEL_ID, lambda device, dtype, seed: load_toyworld_v2(device=device, dtype=dtype))
