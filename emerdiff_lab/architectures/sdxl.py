"""SDXL: two CLIP text encoders, pooled embedding and size ids on every UNet call."""

from __future__ import annotations

import torch

from ..core import EmerDiffModel
from .base import EMPTY_PROMPT_MODES, Condition, as_condition, token_ids, upcast_vae_dtype
from .sd import StableDiffusion


class StableDiffusionXL(StableDiffusion):
    """SDXL: two CLIP text encoders, pooled embedding and size/crop ids on every UNet call, the
    VAE in float32 where it would overflow in float16.

    Args:
        empty_prompt: the condition of the empty prompt (EmerDiff's default, no guidance).
            ``"zeros"`` (default): zero token and pooled embeddings, what SDXL was trained on
            for a dropped caption and what its pipeline uses for the empty negative prompt
            (``force_zeros_for_empty_prompt``). ``"encoded"``: the encoders' output for "", the
            counterpart of SD 1.x's null prompt. A non-empty prompt is always encoded.
    """

    name = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"

    def __init__(self, empty_prompt: str = "zeros"):
        if empty_prompt not in EMPTY_PROMPT_MODES:
            raise ValueError(f"empty_prompt must be one of {EMPTY_PROMPT_MODES}, got "
                             f"{empty_prompt!r}")
        self.empty_prompt = empty_prompt

    def __repr__(self) -> str:
        return f"StableDiffusionXL(empty_prompt={self.empty_prompt!r})"

    def matches(self, model: EmerDiffModel) -> bool:
        return getattr(model.unet.config, "addition_embed_type", None) == "text_time"

    def pipeline_kwargs(self) -> dict:
        # the invisible watermark touches only the pipeline's own outputs, which EmerDiff never
        # uses; turning it off drops the optional package it needs
        return {"add_watermarker": False}

    def components(self, pipe) -> dict:
        parts = super().components(pipe)
        for part in ("text_encoder_2", "tokenizer_2"):
            if getattr(pipe, part, None) is None:
                raise ValueError(f"an SDXL pipeline needs {part!r}; got {type(pipe).__name__} "
                                 f"without it (refiner-only pipelines are not supported)")
            parts[part] = getattr(pipe, part)
        return parts

    def encode_prompt(self, model: EmerDiffModel, prompt: str) -> Condition:
        """Penultimate hidden states of both encoders, concatenated along the width (SDXL:
        768 + 1280 = 2048), and the second encoder's pooled projection (1280), as the SDXL
        pipeline's ``encode_prompt`` without ``clip_skip``; zeros for "" in ``"zeros"`` mode."""
        hidden, pooled = [], None
        for tokenizer, encoder in ((model.tokenizer, model.text_encoder),
                                   (model.tokenizer_2, model.text_encoder_2)):
            ids = token_ids(tokenizer, prompt).to(model.device)
            output = encoder(ids, output_hidden_states=True)
            if output[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds come first
                pooled = output[0]
            hidden.append(output.hidden_states[-2])
        if pooled is None:
            raise ValueError("SDXL's second text encoder must return a pooled projection "
                             "(CLIPTextModelWithProjection); got "
                             f"{type(model.text_encoder_2).__name__}")
        embeds = torch.cat(hidden, dim=-1).to(model.dtype)
        pooled = pooled.to(model.dtype)
        if prompt == "" and self.empty_prompt == "zeros":
            embeds, pooled = torch.zeros_like(embeds), torch.zeros_like(pooled)
        return Condition(embeds, {"text_embeds": pooled})

    def unet_inputs(self, model: EmerDiffModel, condition, latents: torch.Tensor) -> dict:
        """Adds ``added_cond_kwargs``: the pooled embedding and the six size ids (original
        size, crop top-left, target size), here the square image the latents decode to, not
        cropped, as the SDXL pipeline's ``_get_add_time_ids`` for a generated image."""
        condition = as_condition(model, condition)
        pooled = condition.added.get("text_embeds")
        if pooled is None:
            raise ValueError("SDXL needs the pooled text embedding on every UNet call: pass "
                             "model.condition(prompt) (or embeddings model.prompt_embeds "
                             "returned), not a bare embeddings tensor")
        batch = latents.shape[0]
        height, width = (side * model.vae_scale_factor for side in latents.shape[-2:])
        time_ids = [height, width, 0, 0, height, width]
        expected = model.unet.add_embedding.linear_1.in_features
        passed = model.unet.config.addition_time_embed_dim * len(time_ids) + pooled.shape[-1]
        if passed != expected:
            raise ValueError(f"this UNet's added embedding takes {expected} values, but "
                             f"{len(time_ids)} time ids and a {pooled.shape[-1]}-wide pooled "
                             f"embedding give {passed}: the text encoders do not belong to it")
        time_ids = torch.tensor([time_ids], dtype=model.dtype, device=model.device)
        return {"encoder_hidden_states": condition.embeds.expand(batch, -1, -1),
                "added_cond_kwargs": {"text_embeds": pooled.expand(batch, -1),
                                      "time_ids": time_ids.expand(batch, -1)}}

    def vae_dtype(self, model: EmerDiffModel) -> torch.dtype:
        """float32 where the model runs in float16 and the VAE says ``force_upcast`` (SDXL's
        VAE overflows in float16); the model's dtype otherwise (bfloat16 has the range)."""
        return upcast_vae_dtype(model)
