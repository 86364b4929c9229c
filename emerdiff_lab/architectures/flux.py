"""FLUX.1 (dev, schnell): a flow-matching transformer (``FluxTransformer2DModel``) with
double-stream and single-stream blocks.

- Prompt: CLIP ViT-L/14's pooled output (768, ``pooled_projections``) and T5-XXL's last hidden
  states (1, 512 tokens for dev, 256 for schnell, 4096), as ``FluxPipeline.encode_prompt``. The
  empty prompt is the encoders' output for "" (what the pipeline would use as a negative
  prompt); every condition is cached once, and :meth:`Flux.release_text_encoders` keeps the
  cached ones and frees the encoders (T5-XXL: 8.9 GiB in bfloat16).
- Denoiser call: latents (B, 16, h, w) packed 2x2 into (B, h/2 * w/2, 64) tokens and unpacked
  after, as the pipeline's ``_pack_latents`` / ``_unpack_latents``; ``img_ids`` (h/2 * w/2, 3)
  = (0, row, col), ``txt_ids`` zeros (text tokens, 3); ``timestep`` = σ in [0, 1] and
  ``guidance`` (FLUX.1-dev's embedded guidance, default 3.5: a scalar the model was distilled
  on, not classifier-free guidance) also as the pipeline passes them (the model multiplies
  both by 1000 itself). A transformer with ``guidance_embeds`` refuses a call without guidance.
  The output is the velocity v = ε − x₀ (:mod:`emerdiff_lab.flow_schedule`).
- Schedule: FLUX.1-dev shifts its σ by the image size (``use_dynamic_shifting``):
  ``mu = calculate_shift(image tokens)``, 0.63 at 512 px (1024 tokens) and 1.15 at 1024 px
  (4096), on the pipeline's unshifted ``linspace(1, 1/N, N)``; the schedule of a run is made
  from the image's latent size (:meth:`Flux.image_schedule`). t_m and t_f map to σ by equal SNR
  and t_m snaps to the nearest step, as for SD3.
- Layers: every block's attention can be read and perturbed (:mod:`emerdiff_lab.flux_processors`
  says how, per block kind); the default is the double-stream block ``num_layers // 2``
  (``transformer_blocks.9.attn`` of 19) for features and modulation. One token grid for all
  (:class:`emerdiff_lab.layers.FluxGeometry`).
- VAE: 16 channels, ``scaling_factor`` 0.3611 and ``shift_factor`` 0.1159 (the base round trip),
  in float32 where the model runs in float16 (``force_upcast``).
"""

from __future__ import annotations

import torch

from ..config import EmerDiffConfig
from ..core import EmerDiffModel
from ..flow_schedule import feature_sigma, flow_schedule, modulation_time
from ..layers import FluxGeometry, resolve_layers
from .base import (Architecture, Condition, as_condition, is_diffusers_instance, token_ids,
                   upcast_vae_dtype)

DEV_T5_TOKENS = 512      # FLUX.1-dev's max_sequence_length (the pipeline's default)
SCHNELL_T5_TOKENS = 256  # FLUX.1-schnell was trained with 256
DEFAULT_GUIDANCE = 3.5   # the FLUX pipeline's guidance_scale


class Flux(Architecture):
    """FLUX.1 (``FluxPipeline``); see the module docstring.

    Args:
        max_sequence_length: T5 tokens per prompt (512 for dev, 256 for schnell).
        guidance: FLUX.1-dev's embedded guidance scale; None makes a call to a transformer with
            ``guidance_embeds`` fail (schnell has none: the value is not passed to it).
        image_size: the native image side in pixels (1024 for FLUX.1; FLUX's config has no
            ``sample_size``): the size images are brought to when none is given.
    """

    name = "flux"
    pipeline_class = "FluxPipeline"

    def __init__(self, max_sequence_length: int = DEV_T5_TOKENS,
                 guidance: float | None = DEFAULT_GUIDANCE, image_size: int = 1024):
        for value, what in ((max_sequence_length, "max_sequence_length"),
                            (image_size, "image_size")):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
        if guidance is not None and (isinstance(guidance, bool)
                                     or not isinstance(guidance, (int, float))):
            raise ValueError(f"guidance must be a number or None, got {guidance!r}")
        self.max_sequence_length = max_sequence_length
        self.guidance = None if guidance is None else float(guidance)
        self.image_size = image_size

    def __repr__(self) -> str:
        return (f"Flux(max_sequence_length={self.max_sequence_length}, "
                f"guidance={self.guidance}, image_size={self.image_size})")

    def matches(self, model: EmerDiffModel) -> bool:
        return is_flux_transformer(model.unet)

    # -- loading
    def components(self, pipe) -> dict:
        """``transformer`` goes into the model's ``unet`` field; CLIP is ``text_encoder``, T5
        ``text_encoder_2`` (the pipeline's names)."""
        return self.required_parts(pipe, {"transformer": "unet", "vae": "vae",
                                          "text_encoder": "text_encoder",
                                          "tokenizer": "tokenizer",
                                          "text_encoder_2": "text_encoder_2",
                                          "tokenizer_2": "tokenizer_2"})

    def native_image_size(self, model: EmerDiffModel) -> int:
        return self.image_size

    # -- schedule and times
    def scheduler(self, scheduler_config) -> object:
        """The model's ``FlowMatchEulerDiscreteScheduler`` (only its config is read)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))

    def default_config(self, scheduler, base: EmerDiffConfig | None = None) -> EmerDiffConfig:
        """The paper's values: t_m = 281 and t_f = 1 keep their meaning (SD's noise levels),
        mapped to σ by SNR when the schedule is made."""
        return base or EmerDiffConfig()

    def schedule(self, model: EmerDiffModel, num_inference_steps: int):
        """The schedule at the native image size (where no image is at hand)."""
        side = self.image_size // model.vae_scale_factor
        return self.image_schedule(model, num_inference_steps, (side, side))

    def image_schedule(self, model: EmerDiffModel, num_inference_steps: int,
                       latent_size: tuple[int, int]):
        """The pipeline's σ for latents of ``latent_size`` (h, w): ``linspace(1, 1/N, N)``,
        shifted by ``mu`` of the image tokens where the scheduler shifts dynamically (dev), by
        its fixed shift otherwise (schnell: 1, none)."""
        import numpy as np

        config = model.scheduler.config
        mu = None
        if config.get("use_dynamic_shifting", False):
            mu = shift_mu(config, image_tokens(latent_size))
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        return flow_schedule(model.scheduler, num_inference_steps, mu=mu, sigmas=sigmas)

    def modulation_timestep(self, model: EmerDiffModel, schedule, cfg: EmerDiffConfig) -> float:
        """1000 σ of the step t_m snaps to on ``schedule`` (see :meth:`modulation_time`)."""
        return modulation_time(schedule, cfg).timestep

    def modulation_time(self, model: EmerDiffModel, cfg: EmerDiffConfig,
                        image_size: int | None = None):
        """Where t_m lands (:class:`~emerdiff_lab.flow_schedule.FlowTime`) at ``image_size``
        pixels (default native): the σ asked for, the snapped σ and the steps left."""
        side = (image_size or self.image_size) // model.vae_scale_factor
        return modulation_time(self.image_schedule(model, cfg.num_inference_steps, (side, side)),
                               cfg)

    def feature_input(self, model: EmerDiffModel, x0: torch.Tensor, noise: torch.Tensor,
                      cfg: EmerDiffConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """x_σ = (1 − σ) x₀ + σ ε at the feature σ, and the timestep 1000 σ (1,) float32."""
        sigma = torch.tensor(feature_sigma(cfg), dtype=torch.float32)
        timesteps = (sigma * model.scheduler.config.num_train_timesteps).reshape(1)
        return (1 - sigma) * x0 + sigma * noise, timesteps

    # -- text
    def encode_prompt(self, model: EmerDiffModel, prompt: str) -> Condition:
        """(1, max_sequence_length, 4096) T5 embeddings and ``{"pooled_projections": (1, 768)}``
        (CLIP's pooled output)."""
        if model.text_encoder is None or model.text_encoder_2 is None:
            raise ValueError(f"the text encoders were released; only the prompts encoded before "
                             f"are available: {sorted(model._prompt_cache)}")
        clip = model.text_encoder(token_ids(model.tokenizer, prompt).to(model.device),
                                  output_hidden_states=False)
        pooled = getattr(clip, "pooler_output", None)
        if pooled is None:
            raise ValueError(f"FLUX's CLIP encoder must return a pooled output (CLIPTextModel); "
                             f"got {type(model.text_encoder).__name__}")
        ids = model.tokenizer_2(prompt, padding="max_length", max_length=self.max_sequence_length,
                                truncation=True, return_tensors="pt").input_ids
        embeds = model.text_encoder_2(ids.to(model.device), output_hidden_states=False)[0]
        return Condition(embeds.to(model.device, model.dtype),
                         {"pooled_projections": pooled.to(model.device, model.dtype)})

    def release_text_encoders(self, model: EmerDiffModel, prompts=("",)) -> None:
        """Encodes ``prompts`` into the model's cache, then drops both text encoders, so that
        only the transformer and VAE stay resident."""
        for prompt in prompts:
            model.condition(prompt)
        model.text_encoder = model.text_encoder_2 = None

    # -- denoiser
    def predict(self, model: EmerDiffModel, latents: torch.Tensor, timesteps: torch.Tensor,
                condition) -> torch.Tensor:
        """The velocity (B, 16, h, w) at ``timesteps`` = 1000 σ, (B,) or (1,) (expanded)."""
        from ..flux_processors import carry_text_length

        batch, _, height, width = latents.shape
        self.geometry(model).check_latent_size(height, width)
        condition = as_condition(model, condition)
        pooled = condition.added.get("pooled_projections")
        if pooled is None:
            raise ValueError("FLUX needs the pooled CLIP projection on every call: pass "
                             "model.condition(prompt) (or embeddings model.prompt_embeds "
                             "returned), not a bare embeddings tensor")
        guidance = None
        if model.unet.config.guidance_embeds:
            if self.guidance is None:
                raise ValueError("this FLUX transformer embeds a guidance scale "
                                 "(guidance_embeds: FLUX.1-dev) and must be called with one; "
                                 "use Flux(guidance=3.5), the pipeline's default")
            guidance = torch.full((batch,), self.guidance, device=latents.device,
                                  dtype=torch.float32)
        timesteps = timesteps.expand(batch) if timesteps.numel() == 1 else timesteps
        sigmas = timesteps.float() / model.scheduler.config.num_train_timesteps
        text_tokens = condition.embeds.shape[1]
        carry_text_length(model.unet, text_tokens)
        out = model.unet(
            hidden_states=pack_latents(latents),
            encoder_hidden_states=condition.embeds.expand(batch, -1, -1),
            pooled_projections=pooled.expand(batch, -1), timestep=sigmas, guidance=guidance,
            img_ids=latent_image_ids(height // 2, width // 2, latents.device, latents.dtype),
            txt_ids=torch.zeros(text_tokens, 3, device=latents.device, dtype=latents.dtype),
            return_dict=False)[0]
        return unpack_latents(out, height, width)

    def geometry(self, model: EmerDiffModel) -> FluxGeometry:
        return FluxGeometry(model.unet, text_tokens=self.max_sequence_length)

    def default_layers(self, model: EmerDiffModel, image_size: int) -> tuple[str, str]:
        """The attention of double-stream block ``num_layers // 2`` for both (our choice)."""
        return resolve_layers(model.unet, image_size, vae_scale_factor=model.vae_scale_factor)

    def vae_dtype(self, model: EmerDiffModel) -> torch.dtype:
        return upcast_vae_dtype(model)


def is_flux_transformer(module) -> bool:
    return is_diffusers_instance(module, "FluxTransformer2DModel")


def image_tokens(latent_size: tuple[int, int]) -> int:
    """Tokens of latents (h, w) packed 2x2: 1024 at 512 px, 4096 at 1024 px."""
    return (latent_size[0] // 2) * (latent_size[1] // 2)


def shift_mu(scheduler_config, tokens: int) -> float:
    """The FLUX pipeline's dynamic shift for ``tokens`` image tokens (its ``calculate_shift``:
    linear from ``base_shift`` at ``base_image_seq_len`` to ``max_shift`` at
    ``max_image_seq_len``; FLUX.1-dev: 0.5 at 256, 1.15 at 4096, so 0.63 at 1024)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    return calculate_shift(tokens, scheduler_config.get("base_image_seq_len", 256),
                           scheduler_config.get("max_image_seq_len", 4096),
                           scheduler_config.get("base_shift", 0.5),
                           scheduler_config.get("max_shift", 1.15))


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) -> (B, h/2 * w/2, 4C): each 2x2 cell block one token, row-major over the
    token grid, channels (C, 2, 2) flattened (the FLUX pipeline's ``_pack_latents``)."""
    batch, channels, height, width = latents.shape
    tokens = latents.view(batch, channels, height // 2, 2, width // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return tokens.reshape(batch, (height // 2) * (width // 2), channels * 4)


def unpack_latents(tokens: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The inverse of :func:`pack_latents`: (B, h/2 * w/2, 4C) -> (B, C, h, w)."""
    batch, _, packed = tokens.shape
    cells = tokens.view(batch, height // 2, width // 2, packed // 4, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return cells.reshape(batch, packed // 4, height, width)


def latent_image_ids(rows: int, cols: int, device, dtype) -> torch.Tensor:
    """(rows * cols, 3) RoPE positions of the image tokens: (0, row, col), row-major (the
    pipeline's ``_prepare_latent_image_ids``)."""
    ids = torch.zeros(rows, cols, 3)
    ids[..., 1] = torch.arange(rows)[:, None]
    ids[..., 2] = torch.arange(cols)[None, :]
    return ids.reshape(rows * cols, 3).to(device=device, dtype=dtype)
