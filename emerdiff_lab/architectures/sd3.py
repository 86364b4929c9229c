"""SD3 / SD3.5: a flow-matching MM-DiT (``SD3Transformer2DModel``) with joint text-image attention.

- Prompt: two CLIPs (penultimate hidden states, 768 + 1280 wide, concatenated: 2048) zero-padded
  to T5's width (4096) and concatenated with T5's 256 tokens along the sequence (77 + 256 = 333
  tokens); the pooled vector is both CLIPs' projections (768 + 1280 = 2048), as the SD3 pipeline's
  ``encode_prompt`` without ``clip_skip``. T5 may be absent (``text_encoder_3=None``, as the
  pipeline allows): zeros take its place. The empty prompt is the encoders' output for "" (what
  the pipeline uses for the empty negative prompt); every condition is cached, and
  :meth:`StableDiffusion3.release_text_encoders` keeps the cached ones and frees the encoders.
- Denoiser call: ``pooled_projections`` and ``timestep`` = 1000 σ per element; the output is the
  velocity v = ε − x₀ that the flow schedule steps with (:mod:`emerdiff_lab.flow_schedule`).
- Times: t_m and t_f map to σ by equal SNR with SD's ᾱ; t_m snaps to the nearest step of the
  N-step schedule (SD3 at 50 steps: σ = 0.4384, 11 steps left); ``modulation_sigma`` /
  ``feature_sigma`` give σ directly.
- Layers: the joint attention ``attn`` of block ``num_layers // 2`` for features (queries of the
  image tokens, ``to_q`` output before the RMS q/k norm) and modulation (offset on the image
  tokens after ``to_out``, before the block's AdaLN gate ``gate_msa``); every block on one token
  grid (:class:`emerdiff_lab.layers.JointPatchGeometry`). docs/architectures.md says why.
- VAE: 16 channels, ``shift_factor`` and ``scaling_factor`` (the base round trip), in float32
  where the model runs in float16 (``force_upcast``).
"""

from __future__ import annotations

import torch

from ..config import EmerDiffConfig
from ..core import EmerDiffModel
from ..flow_schedule import feature_sigma, flow_schedule, modulation_time
from ..layers import JointPatchGeometry, resolve_layers
from .base import (Architecture, Condition, as_condition, is_diffusers_instance, token_ids,
                   upcast_vae_dtype)

T5_TOKENS = 256  # the SD3 pipeline's default max_sequence_length


class StableDiffusion3(Architecture):
    """SD3 / SD3.5 (``StableDiffusion3Pipeline``); see the module docstring.

    Args:
        max_sequence_length: T5 tokens per prompt (the pipeline's default 256).
    """

    name = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"

    def __init__(self, max_sequence_length: int = T5_TOKENS):
        if isinstance(max_sequence_length, bool) or not isinstance(max_sequence_length, int) \
                or max_sequence_length < 1:
            raise ValueError(f"max_sequence_length must be a positive integer, got "
                             f"{max_sequence_length!r}")
        self.max_sequence_length = max_sequence_length

    def __repr__(self) -> str:
        return f"StableDiffusion3(max_sequence_length={self.max_sequence_length})"

    def matches(self, model: EmerDiffModel) -> bool:
        return is_sd3_transformer(model.unet)

    # -- loading
    def components(self, pipe) -> dict:
        """``transformer`` goes into the model's ``unet`` field; both CLIPs and their
        tokenizers are needed, T5 (``text_encoder_3``) is optional."""
        parts = self.required_parts(pipe, {"transformer": "unet", "vae": "vae",
                                           "text_encoder": "text_encoder",
                                           "tokenizer": "tokenizer",
                                           "text_encoder_2": "text_encoder_2",
                                           "tokenizer_2": "tokenizer_2"})
        parts["text_encoder_3"] = getattr(pipe, "text_encoder_3", None)
        parts["tokenizer_3"] = getattr(pipe, "tokenizer_3", None)
        return parts

    def scheduler(self, scheduler_config) -> object:
        """The model's ``FlowMatchEulerDiscreteScheduler`` (only its config is read: the engine
        keeps its own σ table, :func:`emerdiff_lab.flow_schedule.flow_schedule`)."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        return FlowMatchEulerDiscreteScheduler.from_config(dict(scheduler_config))

    def default_config(self, scheduler, base: EmerDiffConfig | None = None) -> EmerDiffConfig:
        """The paper's values: t_m = 281 and t_f = 1 keep their meaning (SD's noise levels),
        mapped to σ by SNR when the schedule is made."""
        return base or EmerDiffConfig()

    def schedule(self, model: EmerDiffModel, num_inference_steps: int):
        """The model's :class:`~emerdiff_lab.flow_schedule.FlowSchedule` (fixed shift)."""
        return flow_schedule(model.scheduler, num_inference_steps)

    def modulation_timestep(self, model: EmerDiffModel, schedule, cfg: EmerDiffConfig) -> float:
        """1000 σ of the step t_m snaps to (see :meth:`modulation_time`)."""
        return modulation_time(schedule, cfg).timestep

    def modulation_time(self, model: EmerDiffModel, cfg: EmerDiffConfig,
                        image_size: int | None = None):
        """Where t_m lands (:class:`~emerdiff_lab.flow_schedule.FlowTime`): the σ asked for,
        the snapped σ and the steps left (at any ``image_size``: SD3's shift is fixed)."""
        return modulation_time(self.schedule(model, cfg.num_inference_steps), cfg)

    def feature_input(self, model: EmerDiffModel, x0: torch.Tensor, noise: torch.Tensor,
                      cfg: EmerDiffConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """x_σ = (1 − σ) x₀ + σ ε at the feature σ (t_f by SNR, or ``cfg.feature_sigma``), and
        the timestep 1000 σ (1,) float32."""
        sigma = torch.tensor(feature_sigma(cfg), dtype=torch.float32)
        timesteps = (sigma * model.scheduler.config.num_train_timesteps).reshape(1)
        return (1 - sigma) * x0 + sigma * noise, timesteps

    # -- text
    def encode_prompt(self, model: EmerDiffModel, prompt: str) -> Condition:
        """(1, 77 + T5 tokens, 4096) embeddings and ``{"pooled_projections": (1, 2048)}``."""
        if model.text_encoder is None or model.text_encoder_2 is None:
            raise ValueError(f"the text encoders were released; only the prompts encoded before "
                             f"are available: {sorted(model._prompt_cache)}")
        clip_hidden, pooled = [], []
        for tokenizer, encoder in ((model.tokenizer, model.text_encoder),
                                   (model.tokenizer_2, model.text_encoder_2)):
            output = encoder(token_ids(tokenizer, prompt).to(model.device),
                             output_hidden_states=True)
            if output[0].ndim != 2:
                raise ValueError(f"SD3's CLIP encoders must return pooled projections "
                                 f"(CLIPTextModelWithProjection); got {type(encoder).__name__}")
            pooled.append(output[0])
            clip_hidden.append(output.hidden_states[-2])
        clip = torch.cat(clip_hidden, dim=-1)
        t5 = self._t5_embeds(model, prompt, clip)
        if t5.shape[-1] < clip.shape[-1]:
            raise ValueError(f"T5's width {t5.shape[-1]} is narrower than the CLIPs' "
                             f"{clip.shape[-1]}; they do not belong together")
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        embeds = torch.cat([clip, t5.to(clip.dtype)], dim=-2).to(model.dtype)
        return Condition(embeds, {"pooled_projections": torch.cat(pooled, -1).to(model.dtype)})

    def _t5_embeds(self, model: EmerDiffModel, prompt: str, like: torch.Tensor) -> torch.Tensor:
        """T5's last hidden states (1, max_sequence_length, width), or zeros of the
        transformer's ``joint_attention_dim`` without T5 (as the pipeline does)."""
        if model.text_encoder_3 is None:
            width = model.unet.config.joint_attention_dim
            return torch.zeros(1, self.max_sequence_length, width, dtype=like.dtype,
                               device=like.device)
        ids = model.tokenizer_3(prompt, padding="max_length", max_length=self.max_sequence_length,
                                truncation=True, add_special_tokens=True,
                                return_tensors="pt").input_ids
        return model.text_encoder_3(ids.to(model.device))[0]

    def release_text_encoders(self, model: EmerDiffModel, prompts=("",)) -> None:
        """Encodes ``prompts`` into the model's cache, then drops the three text encoders (about
        5 GB with T5-XXL in bfloat16), so that only the transformer and VAE stay resident."""
        for prompt in prompts:
            model.condition(prompt)
        model.text_encoder = model.text_encoder_2 = model.text_encoder_3 = None

    # -- denoiser
    def unet_inputs(self, model: EmerDiffModel, condition, latents: torch.Tensor) -> dict:
        """``encoder_hidden_states`` and ``pooled_projections`` expanded to the batch."""
        condition = as_condition(model, condition)
        pooled = condition.added.get("pooled_projections")
        if pooled is None:
            raise ValueError("SD3 needs the pooled text projection on every call: pass "
                             "model.condition(prompt) (or embeddings model.prompt_embeds "
                             "returned), not a bare embeddings tensor")
        batch = latents.shape[0]
        return {"encoder_hidden_states": condition.embeds.expand(batch, -1, -1),
                "pooled_projections": pooled.expand(batch, -1)}

    def predict(self, model: EmerDiffModel, latents: torch.Tensor, timesteps: torch.Tensor,
                condition) -> torch.Tensor:
        """The velocity (B, C, h, w) at ``timesteps`` = 1000 σ, (B,) or (1,) (expanded)."""
        self.geometry(model).check_latent_size(*latents.shape[-2:])
        inputs = self.unet_inputs(model, condition, latents)
        timesteps = timesteps.expand(latents.shape[0]) if timesteps.numel() == 1 else timesteps
        return model.unet(latents, timestep=timesteps, **inputs).sample

    def geometry(self, model: EmerDiffModel) -> JointPatchGeometry:
        return JointPatchGeometry(model.unet)

    def default_layers(self, model: EmerDiffModel, image_size: int) -> tuple[str, str]:
        """The joint attention of block ``num_layers // 2`` for both (e.g.
        ``transformer_blocks.12.attn`` of SD3.5-medium's 24): our choice."""
        return resolve_layers(model.unet, image_size, vae_scale_factor=model.vae_scale_factor)

    def vae_dtype(self, model: EmerDiffModel) -> torch.dtype:
        return upcast_vae_dtype(model)


def is_sd3_transformer(module) -> bool:
    return is_diffusers_instance(module, "SD3Transformer2DModel")
