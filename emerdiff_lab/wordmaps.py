"""Word heat maps from cross-attention (DAAM, Tang et al., ACL 2023), for any model whose
denoiser has cross-attention layers (SD 1.x/2.x, SDXL, PixArt, ToyWorld v2, the tiny models).

For an image, a prompt and some of its words: the clean latent is noised with one fixed noise to
a few timesteps, the denoiser is called once per timestep with the prompt (no guidance), and
every cross-attention layer's probabilities are read. Per layer, the probabilities are summed over
heads and over the word's tokens (all its occurrences), upsampled bilinearly to the image, summed
over layers, averaged over timesteps, and each word's map is divided by its maximum.

These calls are separate from EmerDiff's: inversion and modulation keep their own prompt (the
empty one), and word maps never come from the inversion's trajectory.

    maps = word_heat_maps(model, image, "a house by the water", ["house", "water"])
    maps.maps            # (2, S, S) float32 in [0, 1]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .core import EmerDiffModel
from .images import model_pixels
from .inversion import unet_predict
from .layers import _cross_attention_paths, check_image_size
from .processors import INJECT_RECORD, AttentionControl, installed_processors
from .schedule import equivalent_timestep

__all__ = ["DEFAULT_TIMESTEPS", "WordMaps", "cross_attention_layers", "word_heat_maps",
           "word_token_positions"]

# DAAM-style timesteps on SD's schedule (mapped by noise level onto other schedules).
DEFAULT_TIMESTEPS = (101, 201, 301, 401, 501)


@dataclass(frozen=True)
class WordMaps:
    """Word heat maps of one image.

    Attributes:
        words: the words, in the order of ``maps``.
        maps: (len(words), S, S) float32 on the CPU, each divided by its maximum (so in [0, 1];
            an all-zero map stays zero).
        prompt: the prompt the denoiser saw.
        timesteps: the timesteps (of the model's own schedule) the maps average over.
        layers: the cross-attention layers summed.
    """

    words: tuple[str, ...]
    maps: torch.Tensor
    prompt: str
    timesteps: tuple[int, ...]
    layers: tuple[str, ...]

    def __getitem__(self, word: str) -> torch.Tensor:
        """The (S, S) map of ``word``."""
        if word not in self.words:
            raise KeyError(f"no map for {word!r}; words: {list(self.words)}")
        return self.maps[self.words.index(word)]


def cross_attention_layers(denoiser: torch.nn.Module) -> list[str]:
    """Names of every cross-attention layer of a denoiser, in module order."""
    return [path[1:] for path in _cross_attention_paths(denoiser, "")]


def word_token_positions(tokenizer, prompt: str, word: str,
                         length: int | None = None) -> list[int]:
    """Positions in ``prompt``'s token ids (padded and truncated to ``length``, default the
    tokenizer's ``model_max_length``) of every occurrence of ``word``'s tokens.

    Raises:
        ValueError: the word is empty or its tokens do not occur in the prompt (e.g. it is not
            one of the prompt's words, or it was truncated away).
    """
    word_ids = tokenizer(word.strip(), add_special_tokens=False).input_ids
    if not word_ids:
        raise ValueError(f"word {word!r} has no tokens")
    length = length or tokenizer.model_max_length
    ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True).input_ids
    n = len(word_ids)
    positions = [p for start in range(len(ids) - n + 1) if ids[start:start + n] == word_ids
                 for p in range(start, start + n)]
    if not positions:
        raise ValueError(f"the word {word!r} does not occur in the prompt {prompt!r} (after "
                         f"tokenisation and truncation to {length} tokens)")
    return positions


@torch.no_grad()
def word_heat_maps(model: EmerDiffModel, image, prompt: str, words=None, *,
                   timesteps=DEFAULT_TIMESTEPS, seed: int = 0, image_size: int | None = None,
                   layers: list[str] | None = None) -> WordMaps:
    """DAAM word heat maps of ``image`` for ``words`` of ``prompt``.

    Args:
        model: any :class:`~emerdiff_lab.EmerDiffModel` whose denoiser has cross-attention.
        image: anything :func:`emerdiff_lab.load_image` takes, or a (3, S, S) tensor in [0, 1].
        prompt: the text the denoiser is conditioned on (a caption, or a list of class names).
        words: the words to map (default: the prompt's words split on spaces and commas).
        timesteps: SD-schedule timesteps, mapped to the model's schedule by noise level.
        seed: seeds the one noise shared by every timestep.
        image_size: side the image is brought to (as for ``segment``).
        layers: cross-attention layers to sum (default: all of them).

    Returns:
        a :class:`WordMaps` with one (S, S) map per word.
    """
    if not isinstance(prompt, str) or not prompt.strip():
        raise ValueError(f"word maps need a non-empty prompt (a string), got {prompt!r}")
    words = tuple(words) if words is not None else tuple(
        w for w in prompt.replace(",", " ").split() if w)
    if not words:
        raise ValueError("words must hold at least one word of the prompt")
    condition = model.condition(prompt)
    # As many positions as the denoiser sees tokens (77 for CLIP; PixArt's T5: its own length).
    positions = [word_token_positions(model.tokenizer, prompt, w, condition.embeds.shape[1])
                 for w in words]
    layers = list(layers) if layers is not None else cross_attention_layers(model.unet)
    if not layers:
        raise ValueError(f"{type(model.unet).__name__} has no cross-attention layer: word maps "
                         f"need a text-conditioned denoiser")
    pixels = model_pixels(image, image_size, model.native_image_size)
    check_image_size(model.unet, pixels.shape[-1], model.vae_scale_factor,
                     geometry=model.architecture.geometry(model))
    size = pixels.shape[-1]
    x0 = model.encode(pixels[None])                                         # (1, C, h, w)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed)).to(x0.device)
    own = tuple(equivalent_timestep(model.scheduler, int(t)) for t in timesteps)
    alpha_bars = model.scheduler.alphas_cumprod.float()
    total = torch.zeros(len(words), size, size)
    for t in own:
        ab = alpha_bars[t].to(x0.device)
        noisy = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        control = AttentionControl(injection=INJECT_RECORD)
        with installed_processors(model.unet, layers, control):
            unet_predict(model, noisy, torch.tensor([t]), condition)
        for name in layers:
            total += _layer_word_maps(control.recorded[name], positions, size)
    maps = total / len(own)
    peak = maps.flatten(1).amax(1).clamp(min=torch.finfo(maps.dtype).tiny)
    return WordMaps(words=words, maps=maps / peak[:, None, None], prompt=prompt,
                    timesteps=own, layers=tuple(layers))


def _layer_word_maps(probs: torch.Tensor, positions: list[list[int]], size: int) -> torch.Tensor:
    """(heads, queries, keys) probabilities of one layer -> (words, size, size) float32 on the
    CPU: summed over heads and each word's tokens, upsampled bilinearly from the square token
    grid."""
    per_token = probs.float().sum(0)                                       # (queries, keys)
    side = int(round(per_token.shape[0] ** 0.5))
    if side * side != per_token.shape[0]:
        raise ValueError(f"cross-attention over {per_token.shape[0]} queries is not a square "
                         f"token grid; word maps need square images")
    maps = torch.stack([per_token[:, p].sum(1) for p in positions])         # (words, queries)
    maps = maps.view(1, len(positions), side, side).cpu()
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=False)[0]
