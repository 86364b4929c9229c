"""Edit-friendly DDPM inversion (Huberman-Spiegelglas et al., CVPR 2024) of a real image, and
its flow-matching counterpart.

Every x_t is drawn independently as sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps_t, and the noise map of
each step is the one that makes the DDPM step land exactly on the next stored latent:
z_t = (x_{t-1} - mu_t(x_t)) / sigma_t. Denoising from any stored x_t with the stored z's then
reproduces x_0 up to float error, which is what lets EmerDiff attribute every pixel change to its
modulation. Because the x_t do not depend on each other, the noise predictions of all steps come
from batched UNet calls.

On a flow-matching model (SD3) the same holds with x_i = (1 - sigma_i) x_0 + sigma_i eps_i and
the Euler step's residual stored in place of the noise map (:mod:`emerdiff_lab.flow_schedule`);
the model's architecture supplies the schedule, so the code below is the same for both.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from .architectures import Condition
from .config import EmerDiffConfig
from .core import EmerDiffModel
from .finite import check_finite, overflow_cause
from .images import model_pixels
from .layers import check_image_size
from .flow_schedule import FlowSchedule
from .schedule import DDPMSchedule


# Called after every denoiser call made in this context (thread): how a
# :class:`emerdiff_lab.session.Session` counts the denoising steps done for its progress callback.
UNET_CALL_OBSERVER: ContextVar = ContextVar("unet_call_observer", default=None)


@dataclass(frozen=True, eq=False)
class Inversion:
    """A stored denoising trajectory that reproduces one image.

    Attributes:
        timesteps: (S,) int64, descending (e.g. 281, 261, ..., 1 when limited to t <= t_m); on a
            flow schedule (S,) float32, 1000 sigma (e.g. 438.4, ..., 8.9).
        latents: (S + 1, C, h, w) float32: the latent at each timestep, then x_0.
        noise: (S, C, h, w) float32: the noise map of every step (the last one, t = 1 -> x_0,
            included), so that ``step(latents[i], noise[i]) == latents[i + 1]``; on a flow
            schedule the Euler step's residual.
        prompt_embeds: (1, tokens, width) text embeddings every UNet call is conditioned on.
        image: (3, H, W) float32 in [0, 1], the image that was inverted.
        num_inference_steps: length of the schedule the timesteps come from.
        schedule: the full ``num_inference_steps`` schedule the trajectory was made on
            (timesteps, alpha-bars, previous steps); stepping uses it, never the model's
            scheduler. None (an Inversion built by hand): made from the model when stepped.
        condition: the whole condition (``prompt_embeds`` plus architecture extras such as
            SDXL's pooled embedding); None: ``prompt_embeds`` alone.
    """

    timesteps: torch.Tensor
    latents: torch.Tensor
    noise: torch.Tensor
    prompt_embeds: torch.Tensor
    image: torch.Tensor
    num_inference_steps: int
    schedule: DDPMSchedule | FlowSchedule | None = None
    condition: Condition | None = None

    def __post_init__(self) -> None:
        steps = len(self.timesteps)
        if self.latents.shape[0] != steps + 1 or self.noise.shape[0] != steps:
            raise ValueError(f"an Inversion of {steps} timesteps needs {steps + 1} latents and "
                             f"{steps} noise maps, got {self.latents.shape[0]} and "
                             f"{self.noise.shape[0]}")
        # prompt_embeds is the condition's embeddings; a copy made with other embeddings
        # (dataclasses.replace) keeps the condition's extras with the new embeddings.
        if self.condition is None or self.condition.embeds is not self.prompt_embeds:
            added = {} if self.condition is None else self.condition.added
            object.__setattr__(self, "condition", Condition(self.prompt_embeds, added))

    def index_of(self, timestep) -> int:
        """Position of ``timestep`` in ``timesteps``; ValueError if it is not stored."""
        key = torch.tensor(float(timestep), dtype=self.timesteps.dtype) \
            if self.timesteps.is_floating_point() else int(timestep)
        matches = (self.timesteps == key).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {timestep} is not in this inversion; stored timesteps are "
                             f"{self.timesteps.tolist()}")
        return int(matches[0, 0])


def schedule(model: EmerDiffModel, num_inference_steps: int) -> torch.Tensor:
    """The descending timesteps (num_inference_steps,) of the model's schedule: int64 on a DDPM
    schedule, float32 (1000 sigma) on a flow one."""
    return model.architecture.schedule(model, num_inference_steps).timesteps.clone()


def check_timestep(model: EmerDiffModel, timestep: int, num_inference_steps: int,
                   argument: str) -> None:
    """ValueError unless ``timestep`` lies on the ``num_inference_steps`` schedule."""
    timesteps = schedule(model, num_inference_steps).tolist()
    if timestep not in timesteps:
        raise ValueError(f"{argument}={timestep} is not on the {num_inference_steps}-step "
                         f"schedule; choose one of {timesteps}")


def _as_schedule(model: EmerDiffModel, steps):
    if isinstance(steps, (DDPMSchedule, FlowSchedule)):
        return steps
    return model.architecture.schedule(model, steps)


def start_timestep(model: EmerDiffModel, cfg: EmerDiffConfig) -> int | float:
    """The timestep of ``cfg``'s ``num_inference_steps`` schedule that modulated denoising
    starts from (its "depth"): ``cfg.modulation_timestep`` on a DDPM schedule (ValueError if it
    is not on it); on a flow schedule 1000 sigma of the step t_m snaps to. Deeper is larger on
    both."""
    steps = model.architecture.schedule(model, cfg.num_inference_steps)
    return model.architecture.modulation_timestep(model, steps, cfg)


def starting_at(model: EmerDiffModel, cfg: EmerDiffConfig, timestep) -> EmerDiffConfig:
    """``cfg`` whose modulation starts at ``timestep`` of its schedule (a DDPM timestep, or
    1000 sigma of a flow step); ``cfg`` itself where that is where it starts already (so that
    on FLUX, whose schedule depends on the image size, t_m snaps once, on the image's
    schedule, not twice)."""
    if isinstance(model.architecture.schedule(model, cfg.num_inference_steps), FlowSchedule):
        if float(timestep) == float(start_timestep(model, cfg)):
            return cfg
        return cfg.replace(modulation_sigma=float(timestep) / 1000.0)
    return cfg.replace(modulation_timestep=int(timestep))


def steps_from(model: EmerDiffModel, cfg: EmerDiffConfig) -> int:
    """Denoising steps from ``cfg``'s t_m to x_0 (15 of 50 for SD's t_m = 281)."""
    steps = model.architecture.schedule(model, cfg.num_inference_steps)
    return steps.num_inference_steps - steps.index_of(start_timestep(model, cfg))


def modulation_timestep(model: EmerDiffModel, inversion: Inversion,
                        cfg: EmerDiffConfig) -> int | float:
    """The stored timestep modulated denoising starts from: ``cfg.modulation_timestep`` on a
    DDPM schedule; on a flow schedule the step t_m (or ``cfg.modulation_sigma``) snaps to."""
    return model.architecture.modulation_timestep(model, inversion_schedule(model, inversion),
                                                  cfg)


def posterior_std(model: EmerDiffModel, timestep: int,
                  num_inference_steps: int | DDPMSchedule) -> float:
    """sigma_t of the DDPM step from ``timestep`` to the previous one on the schedule (eta = 1).

    The step before t = 1 uses the scheduler's final alpha-bar (alpha-bar at t = 0 for SD, since
    ``set_alpha_to_one=False``), so this is about 0.02, never 0. ``num_inference_steps``: the
    schedule's length, or the :class:`DDPMSchedule` itself (an ``Inversion``'s ``schedule``).
    """
    return _as_schedule(model, num_inference_steps).posterior_std(timestep)


def ddpm_step(model: EmerDiffModel, model_output: torch.Tensor, timestep: int,
              latents: torch.Tensor, noise: torch.Tensor,
              num_inference_steps: int | DDPMSchedule) -> torch.Tensor:
    """One DDPM step x_t -> x_{t-1} = mu_t(x_t) + sigma_t * noise, float32, batched over dim 0.

    ``model_output`` is the UNet's prediction (epsilon or v, by the scheduler's
    ``prediction_type``); the step is the DDIM scheduler's with eta = 1 (the DDPM posterior).
    ``num_inference_steps`` is the schedule's length or the :class:`DDPMSchedule` itself (an
    ``Inversion``'s ``schedule``); the step reads only that value, never the scheduler's mutable
    state, so a trajectory made on one schedule is never stepped on another.
    """
    return _as_schedule(model, num_inference_steps).step(model_output, timestep, latents, noise)


@torch.no_grad()
def unet_predict(model: EmerDiffModel, latents: torch.Tensor, timesteps: torch.Tensor,
                 prompt_embeds: torch.Tensor | Condition) -> torch.Tensor:
    """The denoiser's prediction (B, C, h, w) float32 for latents (B, C, h, w) at per-element
    timesteps (B,).

    ``prompt_embeds``: the (1, tokens, width) embeddings ``model.prompt_embeds`` returned, or a
    whole ``model.condition(prompt)``. The model's architecture makes the call: it adds the
    extra inputs its denoiser takes (SDXL: pooled embedding and size ids), expanded to the
    batch, and reads the output as the prediction the scheduler expects (dropping a learned
    variance where the denoiser has one).
    """
    latents = latents.to(model.device, model.dtype)
    out = model.architecture.predict(model, latents, timesteps.to(model.device), prompt_embeds)
    observer = UNET_CALL_OBSERVER.get()
    if observer is not None:
        observer()
    return out.float()


@torch.no_grad()
def invert(model: EmerDiffModel, image, cfg: EmerDiffConfig | None = None, *,
           image_size: int | None = None, full_trajectory: bool = False,
           batch_size: int | None = None, latent: torch.Tensor | None = None,
           progress: bool = True) -> Inversion:
    """Edit-friendly DDPM inversion of ``image``.

    Args:
        model: from :func:`emerdiff_lab.load_model`.
        image: anything :func:`emerdiff_lab.load_image` takes; a (3, S, S) tensor is used as is.
        cfg: supplies ``num_inference_steps``, ``modulation_timestep``, ``prompt`` and ``seed``.
        image_size: side the image is brought to (default: a square tensor's own side, else
            ``model.native_image_size``).
        full_trajectory: store all ``num_inference_steps`` steps; by default only the steps that
            segmentation needs (t <= t_m: 15 of 50 for the paper's t_m = 281) are computed.
        batch_size: UNet elements per call (default: ``cfg.batch_size`` or all steps at once).
        latent: the image's latent x_0 (C, h, w) from ``model.encode`` if the caller already has
            it (saves one VAE encode).
        progress: show a progress bar.

    Returns:
        An :class:`Inversion`; latents are float32 on the model's device.
    """
    cfg = cfg or model.default_config
    pixels = model_pixels(image, image_size, model.native_image_size)
    check_image_size(model.unet, pixels.shape[-1], model.vae_scale_factor,
                     geometry=model.architecture.geometry(model))
    latent_size = tuple(side // model.vae_scale_factor for side in pixels.shape[-2:])
    full_schedule = model.architecture.image_schedule(model, cfg.num_inference_steps,
                                                      latent_size)
    timesteps = full_schedule.timesteps.clone()
    start = model.architecture.modulation_timestep(model, full_schedule, cfg)
    x0 = model.encode(pixels[None])[0] if latent is None else latent.to(model.device).float()

    # Noise for all steps is drawn first, so that a limited and a full inversion with the same
    # seed agree on the steps they share.
    generator = torch.Generator().manual_seed(cfg.seed)
    eps = torch.randn((len(timesteps), *x0.shape), generator=generator).to(x0.device)
    keep = slice(0, None) if full_trajectory else \
        slice(full_schedule.index_of(start), None)
    timesteps, eps = timesteps[keep], eps[keep]

    noisy = full_schedule.noised(x0, eps, keep)                          # (S, C, h, w)
    latents = torch.cat([noisy, x0[None]])                               # (S + 1, C, h, w)

    condition = model.condition(cfg.prompt)
    step = batch_size or cfg.batch_size or len(timesteps)
    predictions = torch.cat([
        unet_predict(model, noisy[i:i + step], timesteps[i:i + step], condition)
        for i in tqdm(range(0, len(timesteps), step), desc="inversion", disable=not progress,
                      leave=False)])

    noise = torch.empty_like(noisy)
    for i, t in enumerate(timesteps.tolist()):  # a flow schedule's residual: std 1
        mean = full_schedule.step(predictions[i:i + 1], t, noisy[i:i + 1],
                                  torch.zeros_like(noisy[i:i + 1]))[0]
        noise[i] = (latents[i + 1] - mean) / full_schedule.posterior_std(t)
    # the noise is made from every UNet prediction and every latent: one check covers them
    check_finite(noise, "the latents of the inversion trajectory",
                 overflow_cause(model.dtype, "the UNet (or the VAE encoder)"))
    return Inversion(timesteps=timesteps, latents=latents, noise=noise,
                     prompt_embeds=condition.embeds, image=pixels.cpu(),
                     num_inference_steps=cfg.num_inference_steps, schedule=full_schedule,
                     condition=condition)


def inversion_schedule(model: EmerDiffModel, inversion: Inversion):
    """The schedule ``inversion`` was made on (made from the model for a hand-built one)."""
    return inversion.schedule or model.architecture.schedule(model, inversion.num_inference_steps)


@torch.no_grad()
def reconstruct(model: EmerDiffModel, inversion: Inversion, start_timestep: int | None = None
                ) -> torch.Tensor:
    """Denoises from the stored latent at ``start_timestep`` (default: the first stored) with the
    stored noise maps; returns the latents (S' + 1, C, h, w) visited, ending at x_0."""
    start = 0 if start_timestep is None else inversion.index_of(start_timestep)
    current = inversion.latents[start:start + 1]
    visited = [current[0]]
    for i in range(start, len(inversion.timesteps)):
        t = inversion.timesteps[i].item()  # int on a DDPM schedule, float (1000 sigma) on flow
        prediction = unet_predict(model, current, torch.tensor([t]), inversion.condition)
        current = ddpm_step(model, prediction, t, current, inversion.noise[i:i + 1],
                            inversion_schedule(model, inversion))
        visited.append(current[0])
    return torch.stack(visited)
