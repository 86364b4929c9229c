"""The architecture layer: the one place that knows how each model family is driven.

One module per family, each a subclass of :class:`~emerdiff_lab.architectures.base.Architecture`
(which lists what a family must provide and holds what they share):

- :class:`StableDiffusion` (``sd``): SD 1.x/2.x (and this project's tiny and ToyWorld models).
- :class:`StableDiffusionXL` (``sdxl``): two text encoders, ``added_cond_kwargs``, float32 VAE.
- :class:`PixArt` (``pixart``): PixArt-α / PixArt-Σ, a diffusion transformer with T5 and an
  attention mask, learned variance, linear betas.
- :class:`StableDiffusion3` (``sd3``): SD3 / SD3.5, a flow-matching MM-DiT with joint text-image
  attention, three text encoders and a pooled projection.
- :class:`Flux` (``flux``): FLUX.1 dev / schnell, a flow-matching transformer with double- and
  single-stream blocks, CLIP-pooled + T5 conditioning, packed 2x2 latents, embedded guidance.

The engine calls the methods and names no family; docs/architectures.md says what is verified
for each. Detection tries the families in :data:`ARCHITECTURES` order (specific first).
"""

from __future__ import annotations

from ..core import register_architecture
from .flux import DEV_T5_TOKENS, SCHNELL_T5_TOKENS, Flux, is_flux_transformer
from .base import (EMPTY_PROMPT_MODES, Architecture, Condition, as_condition,  # noqa: F401
                   latent_statistics, token_ids, upcast_vae_dtype)
from .pixart import PixArt, is_pixart_transformer
from .sd import StableDiffusion
from .sd3 import StableDiffusion3, is_sd3_transformer
from .sdxl import StableDiffusionXL


def for_pipeline(pipe, empty_prompt: str | None = None):
    """The architecture of a diffusers pipeline (by its components), with SDXL's empty-prompt
    mode from ``empty_prompt`` or else the pipeline's ``force_zeros_for_empty_prompt``."""
    transformer = getattr(pipe, "transformer", None)
    if is_flux_transformer(transformer):
        if empty_prompt not in (None, "encoded"):
            raise ValueError(f"empty_prompt={empty_prompt!r} applies to SDXL only; FLUX's "
                             f"pipeline uses the encoders' output for '' as the empty condition")
        # schnell (no guidance embedding) was trained with 256 T5 tokens, dev with 512
        return Flux(DEV_T5_TOKENS if transformer.config.guidance_embeds else SCHNELL_T5_TOKENS)
    if is_sd3_transformer(transformer):
        if empty_prompt not in (None, "encoded"):
            raise ValueError(f"empty_prompt={empty_prompt!r} applies to SDXL only; SD3's "
                             f"pipeline uses the encoders' output for '' as the empty condition")
        return StableDiffusion3()
    if is_pixart_transformer(getattr(pipe, "transformer", None)):
        if empty_prompt not in (None, "encoded"):
            raise ValueError(f"empty_prompt={empty_prompt!r} applies to SDXL only; PixArt's "
                             f"pipelines use T5's encoding of '' as the empty condition")
        return by_pipeline_class(type(pipe).__name__, default=PixArt("alpha"))
    unet = getattr(pipe, "unet", None)
    if unet is not None and getattr(unet.config, "addition_embed_type", None) == "text_time":
        if empty_prompt is None:
            zeros = getattr(pipe.config, "force_zeros_for_empty_prompt", True)
            empty_prompt = "zeros" if zeros else "encoded"
        return StableDiffusionXL(empty_prompt)
    if empty_prompt not in (None, "encoded"):
        raise ValueError(f"empty_prompt={empty_prompt!r} applies to SDXL only; SD 1.x/2.x were "
                         f"trained with the encoding of '' as their null condition")
    return StableDiffusion()


def by_pipeline_class(class_name: str, default=None):
    """The architecture whose diffusers pipeline class is ``class_name`` (a folder's
    model_index.json ``_class_name``), or ``default`` when none is."""
    for architecture in ARCHITECTURES:
        if architecture.pipeline_class == class_name:
            return architecture
    return default


ARCHITECTURES = (Flux(), StableDiffusion3(), StableDiffusionXL(), PixArt("alpha"), PixArt("sigma"),
                 StableDiffusion())
for _architecture in ARCHITECTURES:  # specific before general: detection takes the first match
    register_architecture(_architecture)
