"""SD 1.x/2.x (and this project's tiny and ToyWorld models): a UNet with one CLIP text encoder
on a DDPM schedule, the family the paper was written for."""

from __future__ import annotations

import torch

from ..config import EmerDiffConfig
from ..core import EmerDiffModel, ddpm_scheduler_from_config
from ..layers import UNetGeometry, resolve_layers
from ..schedule import DDPMSchedule, ddpm_schedule, equivalent_timestep
from .base import Architecture, Condition, as_condition, token_ids


class StableDiffusion(Architecture):
    """SD 1.x/2.x: one CLIP text encoder (last hidden states), no extra UNet inputs, the VAE in the
    model's dtype, SD's own noise schedule (timesteps mean what the paper says)."""

    name = "sd"
    pipeline_class = "StableDiffusionPipeline"

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
        return self.required_parts(pipe, {p: p for p in ("unet", "vae", "text_encoder",
                                                          "tokenizer")})

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

    def schedule(self, model: EmerDiffModel, num_inference_steps: int) -> DDPMSchedule:
        """The :class:`~emerdiff_lab.schedule.DDPMSchedule` of the model's scheduler."""
        return ddpm_schedule(model.scheduler, num_inference_steps)

    def modulation_timestep(self, model: EmerDiffModel, schedule: DDPMSchedule,
                            cfg: EmerDiffConfig) -> int:
        """``cfg.modulation_timestep``, which must lie on ``schedule``."""
        timesteps = schedule.timesteps.tolist()
        if cfg.modulation_timestep not in timesteps:
            raise ValueError(f"modulation_timestep={cfg.modulation_timestep} is not on the "
                             f"{schedule.num_inference_steps}-step schedule; choose one of "
                             f"{timesteps}")
        return cfg.modulation_timestep

    def feature_input(self, model: EmerDiffModel, x0: torch.Tensor, noise: torch.Tensor,
                      cfg: EmerDiffConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """x0 noised to ``cfg.feature_timestep`` by the scheduler (alpha-bar), and that
        timestep (1,) int64."""
        t = torch.tensor([cfg.feature_timestep])
        return model.scheduler.add_noise(x0, noise, t.to(x0.device)), t

    # -- text
    def encode_prompt(self, model: EmerDiffModel, prompt: str) -> Condition:
        """The text encoder's last hidden states of ``prompt`` padded to the tokenizer's length."""
        ids = token_ids(model.tokenizer, prompt)
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
