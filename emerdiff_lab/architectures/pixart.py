"""PixArt-α / PixArt-Σ: a diffusion transformer with a T5 text encoder and an attention mask on
linear betas, predicting epsilon and a learned variance."""

from __future__ import annotations

import torch

from ..config import EmerDiffConfig
from ..core import EmerDiffModel, ddpm_scheduler_from_config
from ..layers import PatchGeometry, resolve_layers
from .base import Condition, as_condition, is_diffusers_instance, upcast_vae_dtype
from .sd import StableDiffusion


class PixArt(StableDiffusion):
    """PixArt-α / PixArt-Σ: a diffusion transformer (``PixArtTransformer2DModel``, in the
    model's ``unet`` field) on a patch grid, conditioned on T5's last hidden states with their
    attention mask, DDPM-trained on linear betas, predicting epsilon and a learned variance.

    - Prompt: T5's last hidden states of the prompt padded to ``max_sequence_length`` tokens
      (α: 120, Σ: 300, the pipelines' defaults) and its attention mask, as the pipelines'
      ``encode_prompt`` without caption cleaning. The empty prompt is T5's encoding of "" (one
      real token), what the pipelines use for the empty negative prompt.
    - Denoiser call: ``timestep`` is a keyword; every call gets ``encoder_attention_mask`` and
      ``added_cond_kwargs`` (the 1024 px α model's ``resolution`` (H, W) and ``aspect_ratio``
      H / W in pixels, where ``transformer.use_additional_conditions``; None otherwise, as the
      pipelines pass them).
    - Prediction: the first ``in_channels`` output channels (epsilon); the learned-variance
      channels are dropped, as the pipelines do (the DDPM step uses the fixed posterior
      variance, which the edit-friendly inversion needs).
    - Layers: the cross-attention of block ``num_layers // 2`` for features and modulation, on
      the patch grid (:class:`emerdiff_lab.layers.PatchGeometry`); our choice, see
      docs/architectures.md.
    - Offset: before the output projection (``offset_placement="before_projection"``), not
      after it. A channel-uniform offset c * M added after ``to_out`` is invisible here: every
      block reads the residual stream through a LayerNorm (self-attention, feed-forward, the
      final norm), which removes a per-token constant, except the cross-attention, whose
      queries do not matter for the empty prompt (one unmasked key: every softmax is 1).
      Before ``to_out`` the offset becomes c * (row sums of W_out) per token, which survives.
      (Measured on "tiny-pixart": maps of ~1e-5, float noise, after; ~1 before.)
    - Schedule: SD's leading timestep spacing (981, 961, ..., 1 at 50 steps) on the model's own
      linear betas, so that every step lands on the next timestep and the last one has a
      posterior variance > 0 (the shipped config's "linspace" spacing ends at t = 0, whose step
      has none); t_f and t_m map by alpha-bar (``default_config``).
    - VAE: run in float32 where the model runs in float16 and the VAE says ``force_upcast``
      (Σ uses SDXL's VAE, which overflows in float16; diffusers' PixArt pipelines do not upcast).

    Args:
        variant: ``"alpha"`` (``PixArtAlphaPipeline``) or ``"sigma"`` (``PixArtSigmaPipeline``).
        max_sequence_length: T5 tokens per prompt; None: the variant's pipeline default.
    """

    VARIANTS = {"alpha": ("PixArtAlphaPipeline", 120), "sigma": ("PixArtSigmaPipeline", 300)}

    def __init__(self, variant: str = "alpha", max_sequence_length: int | None = None):
        if variant not in self.VARIANTS:
            raise ValueError(f"variant must be one of {sorted(self.VARIANTS)}, got {variant!r}")
        self.variant = variant
        self.name = f"pixart-{variant}"
        self.pipeline_class, default_length = self.VARIANTS[variant]
        length = default_length if max_sequence_length is None else max_sequence_length
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError(f"max_sequence_length must be a positive integer, got {length!r}")
        self.max_sequence_length = length

    def __repr__(self) -> str:
        return f"PixArt({self.variant!r}, max_sequence_length={self.max_sequence_length})"

    def matches(self, model: EmerDiffModel) -> bool:
        return is_pixart_transformer(model.unet)

    def pipeline_kwargs(self) -> dict:
        return {}

    def components(self, pipe) -> dict:
        """``transformer`` goes into the model's ``unet`` field; ``text_encoder`` and
        ``tokenizer`` (optional in Σ's pipeline) are needed for prompts."""
        return self.required_parts(pipe, {"transformer": "unet", "vae": "vae",
                                          "text_encoder": "text_encoder",
                                          "tokenizer": "tokenizer"})

    def default_config(self, scheduler, base: EmerDiffConfig | None = None) -> EmerDiffConfig:
        """The paper's values with t_f and t_m mapped by alpha-bar onto the model's linear
        betas, and the offset before the output projection (see the class docstring)."""
        return super().default_config(scheduler, base).replace(
            offset_placement="before_projection")

    def scheduler(self, scheduler_config) -> object:
        """The DDPM scheduler on the model's betas with SD's leading spacing (see the class
        docstring: the shipped "linspace" spacing ends at t = 0, a step without variance)."""
        config = dict(scheduler_config)
        config.update(timestep_spacing="leading", steps_offset=1)
        return ddpm_scheduler_from_config(config)

    def encode_prompt(self, model: EmerDiffModel, prompt: str) -> Condition:
        """T5's last hidden states (1, max_sequence_length, width) and the attention mask
        (1, max_sequence_length) of ``prompt``."""
        tokens = model.tokenizer(prompt, padding="max_length", truncation=True,
                                 max_length=self.max_sequence_length, add_special_tokens=True,
                                 return_tensors="pt")
        mask = tokens.attention_mask.to(model.device)
        embeds = model.text_encoder(tokens.input_ids.to(model.device), attention_mask=mask)[0]
        return Condition(embeds.to(model.dtype), {"encoder_attention_mask": mask})

    def unet_inputs(self, model: EmerDiffModel, condition, latents: torch.Tensor) -> dict:
        """``encoder_hidden_states``, ``encoder_attention_mask`` and ``added_cond_kwargs`` of
        one transformer call on ``latents`` (B, C, h, w), expanded to the batch."""
        condition = as_condition(model, condition)
        mask = condition.added.get("encoder_attention_mask")
        if mask is None:
            raise ValueError("PixArt needs the text's attention mask on every call: pass "
                             "model.condition(prompt) (or embeddings model.prompt_embeds "
                             "returned), not a bare embeddings tensor")
        batch = latents.shape[0]
        added = {"resolution": None, "aspect_ratio": None}
        if getattr(model.unet, "use_additional_conditions", False):
            height, width = (side * model.vae_scale_factor for side in latents.shape[-2:])
            options = {"dtype": model.dtype, "device": model.device}
            added = {"resolution": torch.tensor([[height, width]], **options).expand(batch, -1),
                     "aspect_ratio": torch.tensor([[height / width]], **options).expand(batch, -1)}
        return {"encoder_hidden_states": condition.embeds.expand(batch, -1, -1),
                "encoder_attention_mask": mask.expand(batch, -1),
                "added_cond_kwargs": added}

    def predict(self, model: EmerDiffModel, latents: torch.Tensor, timesteps: torch.Tensor,
                condition) -> torch.Tensor:
        """Epsilon (B, C, h, w): the transformer's output without its learned-variance
        channels. ``timesteps`` (B,) or (1,) (expanded to the batch)."""
        inputs = self.unet_inputs(model, condition, latents)
        timesteps = timesteps.expand(latents.shape[0]) if timesteps.numel() == 1 else timesteps
        out = model.unet(latents, timestep=timesteps, **inputs).sample
        channels = latents.shape[1]
        if out.shape[1] == 2 * channels:  # learned sigma: (epsilon, variance) along channels
            return out[:, :channels]
        if out.shape[1] != channels:
            raise ValueError(f"the transformer returns {out.shape[1]} channels for "
                             f"{channels}-channel latents; expected {channels} or "
                             f"{2 * channels} (epsilon and learned variance)")
        return out

    def geometry(self, model: EmerDiffModel) -> PatchGeometry:
        """Every block on the patch grid (:class:`emerdiff_lab.layers.PatchGeometry`)."""
        return PatchGeometry(model.unet)

    def default_layers(self, model: EmerDiffModel, image_size: int) -> tuple[str, str]:
        """The cross-attention of block ``num_layers // 2`` for both (e.g.
        ``transformer_blocks.14.attn2`` of PixArt's 28 blocks): our choice."""
        return resolve_layers(model.unet, image_size, vae_scale_factor=model.vae_scale_factor)

    def vae_dtype(self, model: EmerDiffModel) -> torch.dtype:
        return upcast_vae_dtype(model)


def is_pixart_transformer(module) -> bool:
    return is_diffusers_instance(module, "PixArtTransformer2DModel")
