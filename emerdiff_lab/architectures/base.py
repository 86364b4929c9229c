"""What every model family must provide, and what they share (the VAE round trip).

An architecture object says, for a loaded :class:`~emerdiff_lab.core.EmerDiffModel`, how to
encode a prompt, how to call the denoiser and read its output as a prediction, which layers
EmerDiff reads and modulates and on which token grid, which schedule the model runs on and what
the paper's timesteps mean on it, and how the VAE scales, shifts and upcasts latents. The engine
(features, inversion, modulation, processors, segmentation) calls these methods and names no
family. :class:`Architecture` lists the methods; a family subclasses it (one module per family,
as diffusers keeps one file per model).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch

from ..config import EmerDiffConfig
from ..core import EmerDiffModel

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




class Architecture:
    """The interface of a model family. Subclasses set ``name`` and ``pipeline_class`` and
    implement every method that raises NotImplementedError here; the VAE methods are shared.
    """

    name = "architecture"
    pipeline_class = ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    # -- detection and loading
    def matches(self, model: EmerDiffModel) -> bool:
        """Whether ``model``'s components are this family's (detection tries specific ones
        first)."""
        raise NotImplementedError

    def pipeline_kwargs(self) -> dict:
        """Extra ``from_pretrained`` arguments of this architecture's diffusers pipeline."""
        return {}

    def components(self, pipe) -> dict:
        """The :class:`EmerDiffModel` fields this architecture takes from a diffusers pipeline."""
        raise NotImplementedError

    def required_parts(self, pipe, fields: dict[str, str]) -> dict:
        """``{model field: pipe.<part>}`` for ``fields`` (pipeline part -> model field), with a
        clear error naming the first part the pipeline lacks."""
        parts = {}
        for part, field_name in fields.items():
            if getattr(pipe, part, None) is None:
                raise ValueError(f"from_pipeline expects a diffusers {self.pipeline_class} with a "
                                 f"{part!r} component; got {type(pipe).__name__} without it")
            parts[field_name] = getattr(pipe, part)
        return parts

    # -- schedule and times
    def scheduler(self, scheduler_config) -> object:
        """The scheduler object EmerDiff keeps (only its config and tables are read)."""
        raise NotImplementedError

    def default_config(self, scheduler, base: EmerDiffConfig | None = None) -> EmerDiffConfig:
        """``base`` (the paper's values) adapted to this family (times, offset placement)."""
        raise NotImplementedError

    def schedule(self, model: EmerDiffModel, num_inference_steps: int):
        """The frozen schedule (``DDPMSchedule`` or ``FlowSchedule``) of a run: its
        ``timesteps``, ``index_of``, ``noised``, ``step`` and ``posterior_std`` are what the
        inversion and the modulation use."""
        raise NotImplementedError

    def image_schedule(self, model: EmerDiffModel, num_inference_steps: int,
                       latent_size: tuple[int, int]):
        """The schedule of a run on latents of ``latent_size`` (h, w): :meth:`schedule` for
        every family whose schedule does not depend on the image size (FLUX.1-dev's does: its
        shift ``mu`` follows the number of image tokens)."""
        return self.schedule(model, num_inference_steps)

    def native_image_size(self, model: EmerDiffModel) -> int:
        """The image side the model was trained at, in pixels: the denoiser's ``sample_size``
        latent cells times the VAE factor."""
        return int(model.unet.config.sample_size) * model.vae_scale_factor

    def modulation_timestep(self, model: EmerDiffModel, schedule, cfg: EmerDiffConfig):
        """The timestep of ``schedule`` (as its ``timesteps`` hold it) that modulated
        denoising starts from for ``cfg``; ValueError if ``cfg`` names none."""
        raise NotImplementedError

    def feature_input(self, model: EmerDiffModel, x0: torch.Tensor, noise: torch.Tensor,
                      cfg: EmerDiffConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noisy, timesteps)``: latents x0 (1, C, h, w) noised with ``noise`` to the feature
        time t_f, and the (1,) timestep the denoiser gets with them."""
        raise NotImplementedError

    # -- text and denoiser
    def encode_prompt(self, model: EmerDiffModel, prompt: str) -> Condition:
        """The :class:`Condition` of ``prompt``."""
        raise NotImplementedError

    def predict(self, model: EmerDiffModel, latents: torch.Tensor, timesteps: torch.Tensor,
                condition) -> torch.Tensor:
        """The prediction (B, C, h, w) the schedule steps with, for ``latents`` (B, C, h, w) in
        the model's dtype at ``timesteps`` (B,): one denoiser call."""
        raise NotImplementedError

    def geometry(self, model: EmerDiffModel):
        """The token grid of every layer (an :mod:`emerdiff_lab.layers` geometry)."""
        raise NotImplementedError

    def default_layers(self, model: EmerDiffModel, image_size: int) -> tuple[str, str]:
        """``(feature_layer, modulation_layer)`` by structure."""
        raise NotImplementedError

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
        mean, std = latent_statistics(config, latents)
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
            mean, std = latent_statistics(config, latents)
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


def is_diffusers_instance(module, class_name: str) -> bool:
    """Whether ``module`` is an instance of diffusers' ``class_name`` (False where this
    diffusers has no such class)."""
    import diffusers

    cls = getattr(diffusers, class_name, None)
    return cls is not None and isinstance(module, cls)


def upcast_vae_dtype(model: EmerDiffModel) -> torch.dtype:
    """float32 where the model runs in float16 and its VAE says ``force_upcast``; else the
    model's dtype."""
    if model.dtype == torch.float16 and getattr(model.vae.config, "force_upcast", False):
        return torch.float32
    return model.dtype


def token_ids(tokenizer, prompt: str) -> torch.Tensor:
    """(1, max_length) int64 ids of ``prompt``, padded and truncated to the tokenizer's length."""
    return tokenizer(prompt, padding="max_length", truncation=True,
                     max_length=tokenizer.model_max_length, return_tensors="pt").input_ids


def latent_statistics(config, like: torch.Tensor):
    """The VAE config's per-channel latent mean and std shaped (1, C, 1, 1) like ``like``, or
    (None, None) when the config has none (SD, SDXL base)."""
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is None or std is None:
        return None, None
    shape = (1, len(mean), 1, 1)
    return (torch.tensor(mean, dtype=like.dtype, device=like.device).view(shape),
            torch.tensor(std, dtype=like.dtype, device=like.device).view(shape))
