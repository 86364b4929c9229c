"""The architecture layer: the one place that knows how each model family is driven.

For a loaded model, an architecture says how to encode a prompt (one or two text encoders, pooled
embeddings), which extra inputs every UNet call takes, which layers EmerDiff reads and modulates
by default and on which token grid (:mod:`emerdiff_lab.layers`' geometries), how the denoiser is
called and its output read as a prediction, how the VAE scales, shifts and (for float16
overflow) upcasts latents, and what the paper's timesteps mean on the model's noise schedule.
The engine (features, inversion, modulation, processors, segmentation) calls these methods and
names no architecture.

- :class:`StableDiffusion`: SD 1.x/2.x (and this project's tiny and ToyWorld models).
- :class:`StableDiffusionXL`: SDXL (two text encoders, ``added_cond_kwargs``, float32 VAE).
- :class:`PixArt`: PixArt-α / PixArt-Σ (a diffusion transformer with a T5 text encoder and an
  attention mask, learned variance, linear betas).

docs/architectures.md says what is verified for each.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from .config import EmerDiffConfig
from .core import EmerDiffModel, ddpm_scheduler_from_config, register_architecture
from .layers import PatchGeometry, UNetGeometry, resolve_layers
from .schedule import equivalent_timestep

EMPTY_PROMPT_MODES = ("zeros", "encoded")


@dataclass(frozen=True, eq=False)
class Condition:
    """Everything one prompt conditions a UNet call on.

    Attributes:
        embeds: (1, tokens, width) token embeddings in the model's dtype (the UNet's
            ``encoder_hidden_states``).
        added: architecture-specific extra inputs, each with a leading batch axis of 1 (SDXL:
            ``{"text_embeds": (1, 1280)}``, the pooled embedding of its second text encoder;
            PixArt: ``{"encoder_attention_mask": (1, tokens)}``, 1 for real tokens, 0 for
            padding).
    """

    embeds: torch.Tensor
    added: dict = field(default_factory=dict)


def as_condition(model: EmerDiffModel, condition) -> Condition:
    """A :class:`Condition` from a Condition or from a (1, tokens, width) embeddings tensor.

    A tensor that ``model.prompt_embeds`` returned gets the rest of its prompt's condition back
    (found by identity in the model's prompt cache); any other tensor carries no extra inputs,
    which an architecture that needs them refuses when the UNet is called.
    """
    if isinstance(condition, Condition):
        return condition
    if not isinstance(condition, torch.Tensor):
        raise ValueError(f"expected a Condition or a (1, tokens, width) embeddings tensor, got "
                         f"{type(condition).__name__}")
    for cached in model._prompt_cache.values():
        if cached.embeds is condition:
            return cached
    return Condition(condition)


class StableDiffusion:
    """SD 1.x/2.x: one CLIP text encoder (last hidden states), no extra UNet inputs, the VAE in the
    model's dtype, SD's own noise schedule (timesteps mean what the paper says)."""

    name = "sd"
    pipeline_class = "StableDiffusionPipeline"

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def matches(self, model: EmerDiffModel) -> bool:
        return getattr(model.unet, "up_blocks", None) is not None \
            and getattr(model.unet.config, "addition_embed_type", None) is None \
            and model.text_encoder_2 is None

    # -- loading
    def pipeline_kwargs(self) -> dict:
        """Extra ``from_pretrained`` arguments of this architecture's diffusers pipeline."""
        return {"safety_checker": None, "feature_extractor": None,
                "requires_safety_checker": False}

    def components(self, pipe) -> dict:
        """The :class:`EmerDiffModel` fields this architecture takes from a diffusers pipeline."""
        parts = {}
        for part in ("unet", "vae", "text_encoder", "tokenizer"):
            if getattr(pipe, part, None) is None:
                raise ValueError(f"from_pipeline expects a diffusers {self.pipeline_class} with a "
                                 f"{part!r} component; got {type(pipe).__name__}")
            parts[part] = getattr(pipe, part)
        return parts

    def scheduler(self, scheduler_config) -> object:
        """The DDPM scheduler (a ``DDIMScheduler`` stepped with eta = 1) EmerDiff runs this
        architecture on, from the scheduler config the model ships."""
        return ddpm_scheduler_from_config(scheduler_config)

    def default_config(self, scheduler, base: EmerDiffConfig | None = None) -> EmerDiffConfig:
        """``base`` (the paper's values) with t_f and t_m moved to the timesteps of
        ``scheduler`` that have the same noise level (alpha-bar) as on SD's schedule; on SD's
        own schedule they stay the paper's."""
        base = base or EmerDiffConfig()
        return base.replace(
            feature_timestep=equivalent_timestep(scheduler, base.feature_timestep),
            modulation_timestep=equivalent_timestep(scheduler, base.modulation_timestep,
                                                    base.num_inference_steps))

    # -- text
    def encode_prompt(self, model: EmerDiffModel, prompt: str) -> Condition:
        """The text encoder's last hidden states of ``prompt`` padded to the tokenizer's length."""
        ids = _token_ids(model.tokenizer, prompt)
        embeds = model.text_encoder(ids.to(model.device))[0]
        return Condition(embeds.to(model.dtype))

    # -- UNet
    def unet_inputs(self, model: EmerDiffModel, condition, latents: torch.Tensor) -> dict:
        """Keyword arguments of one UNet call on ``latents`` (B, C, h, w) besides sample and
        timestep: the condition expanded to the batch."""
        condition = as_condition(model, condition)
        return {"encoder_hidden_states": condition.embeds.expand(latents.shape[0], -1, -1)}

    def predict(self, model: EmerDiffModel, latents: torch.Tensor, timesteps: torch.Tensor,
                condition) -> torch.Tensor:
        """The denoiser's prediction (B, C, h, w) (epsilon, v or x_0, by the scheduler's
        ``prediction_type``) for ``latents`` (B, C, h, w) in the model's dtype at
        ``timesteps`` (B,) on the model's device: one UNet call."""
        inputs = self.unet_inputs(model, condition, latents)
        return model.unet(latents, timesteps, **inputs).sample

    def geometry(self, model: EmerDiffModel) -> UNetGeometry:
        """The token grid of every layer (:class:`emerdiff_lab.layers.UNetGeometry`)."""
        return UNetGeometry(model.unet)

    def default_layers(self, model: EmerDiffModel, image_size: int) -> tuple[str, str]:
        """``(feature_layer, modulation_layer)`` by structure (see :func:`resolve_layers`):
        the first cross-attention of the first and of the third attention module of the
        lowest-resolution cross-attention up block (SD: 16x16 at 512 px; the paper's choice)."""
        return resolve_layers(model.unet, image_size, vae_scale_factor=model.vae_scale_factor)

    # -- VAE
    def vae_dtype(self, model: EmerDiffModel) -> torch.dtype:
        """The dtype the VAE runs in: the model's (SD's VAE is fine in float16)."""
        return model.dtype

    def encode_images(self, model: EmerDiffModel, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> latents (B, C, H/f, W/f) float32 as the UNet sees
        them (posterior mean, shifted and scaled by the VAE's config)."""
        pixels = images.to(model.device, torch.float32) * 2 - 1
        if model.vae is None:
            return pixels
        vae, dtype = self._vae(model)
        latents = vae.encode(pixels.to(dtype)).latent_dist.mean.float()
        config = vae.config
        mean, std = _latent_statistics(config, latents)
        if mean is not None:
            return (latents - mean) * config.scaling_factor / std
        shift = getattr(config, "shift_factor", None)
        if shift is not None:
            latents = latents - shift
        return latents * config.scaling_factor

    def decode_latents(self, model: EmerDiffModel, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> images (B, 3, H, W) float32 clamped to [0, 1]."""
        latents = latents.to(model.device, torch.float32)
        if model.vae is None:
            pixels = latents
        else:
            vae, dtype = self._vae(model)
            config = vae.config
            mean, std = _latent_statistics(config, latents)
            if mean is not None:
                scaled = latents * std / config.scaling_factor + mean
            else:
                scaled = latents / config.scaling_factor
                shift = getattr(config, "shift_factor", None)
                if shift is not None:
                    scaled = scaled + shift
            pixels = vae.decode(scaled.to(dtype)).sample.float()
        return ((pixels + 1) / 2).clamp(0, 1)

    def _vae(self, model: EmerDiffModel) -> tuple[torch.nn.Module, torch.dtype]:
        """The VAE to run and its dtype: the model's own, or a float32 copy where
        :meth:`vae_dtype` asks for one (made once and kept; the user's VAE is never cast)."""
        dtype = self.vae_dtype(model)
        if next(model.vae.parameters()).dtype == dtype:
            return model.vae, dtype
        key = ("vae", id(model.vae), dtype)
        if key not in model._derived:
            model._derived.clear()  # a replaced VAE's copy is not kept alive
            model._derived[key] = copy.deepcopy(model.vae).to(dtype)
        return model._derived[key], dtype


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
            ids = _token_ids(tokenizer, prompt).to(model.device)
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
        return _upcast_vae_dtype(model)


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
        return _is_pixart_transformer(model.unet)

    def pipeline_kwargs(self) -> dict:
        return {}

    def components(self, pipe) -> dict:
        """``transformer`` goes into the model's ``unet`` field; ``text_encoder`` and
        ``tokenizer`` (optional in Σ's pipeline) are needed for prompts."""
        parts = {}
        for part, field_name in (("transformer", "unet"), ("vae", "vae"),
                                 ("text_encoder", "text_encoder"), ("tokenizer", "tokenizer")):
            if getattr(pipe, part, None) is None:
                raise ValueError(f"from_pipeline expects a diffusers {self.pipeline_class} with a "
                                 f"{part!r} component; got {type(pipe).__name__} without it")
            parts[field_name] = getattr(pipe, part)
        return parts

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
        return _upcast_vae_dtype(model)


def _is_pixart_transformer(module) -> bool:
    try:
        from diffusers import PixArtTransformer2DModel
    except ImportError:  # a diffusers without PixArt
        return False
    return isinstance(module, PixArtTransformer2DModel)


def _upcast_vae_dtype(model: EmerDiffModel) -> torch.dtype:
    """float32 where the model runs in float16 and its VAE says ``force_upcast``; else the
    model's dtype."""
    if model.dtype == torch.float16 and getattr(model.vae.config, "force_upcast", False):
        return torch.float32
    return model.dtype


def for_pipeline(pipe, empty_prompt: str | None = None):
    """The architecture of a diffusers pipeline (by its components), with SDXL's empty-prompt
    mode from ``empty_prompt`` or else the pipeline's ``force_zeros_for_empty_prompt``."""
    if _is_pixart_transformer(getattr(pipe, "transformer", None)):
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


def _token_ids(tokenizer, prompt: str) -> torch.Tensor:
    """(1, max_length) int64 ids of ``prompt``, padded and truncated to the tokenizer's length."""
    return tokenizer(prompt, padding="max_length", truncation=True,
                     max_length=tokenizer.model_max_length, return_tensors="pt").input_ids


def _latent_statistics(config, like: torch.Tensor):
    """The VAE config's per-channel latent mean and std shaped (1, C, 1, 1) like ``like``, or
    (None, None) when the config has none (SD, SDXL base)."""
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is None or std is None:
        return None, None
    shape = (1, len(mean), 1, 1)
    return (torch.tensor(mean, dtype=like.dtype, device=like.device).view(shape),
            torch.tensor(std, dtype=like.dtype, device=like.device).view(shape))


ARCHITECTURES = (StableDiffusionXL(), PixArt("alpha"), PixArt("sigma"), StableDiffusion())
for _architecture in ARCHITECTURES:  # specific before general: detection takes the first match
    register_architecture(_architecture)
