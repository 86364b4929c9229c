"""The flow-matching schedule as a frozen value, the paper's timesteps on it, and its exact step.

Flow-matching models (SD3, SD3.5, FLUX.1) are trained on x_σ = (1 − σ) x₀ + σ ε and predict the
velocity v = ε − x₀; their sampler is Euler in σ, x_{i+1} = x_i + (σ_{i+1} − σ_i) v(x_i). The
σ table comes from a copy of the model's ``FlowMatchEulerDiscreteScheduler`` (its
``set_timesteps``, shift k included: σ' = kσ / (1 + (k − 1)σ)), read once and kept, as the DDPM
schedule keeps its alpha-bars: the scheduler's own ``step()`` keeps a hidden step index that any
other call moves.

Inversion (:func:`emerdiff_lab.invert`) noises every step's latent independently from x₀,
x_i = (1 − σ_i) x₀ + σ_i ε_i, and stores the residual the Euler step leaves,
r_i = x_{i+1} − x_i − (σ_{i+1} − σ_i) v(x_i). :meth:`FlowSchedule.step` adds it back, so replay
from any stored step lands on x₀ up to float rounding, and modulated denoising reuses the
residuals as the DDPM path reuses its noise maps. (A DDPM-posterior step written in flow
variables, x̂₀ = x − σv, ε̂ = x + (1 − σ)v, would store unit-variance noise instead; it is not
used: it is not the sampler these models ship with, and its noise maps would need a posterior
variance that the Euler sampler has no counterpart for. docs/architectures.md.)

Times: the paper's t_m and t_f are timesteps of SD's DDPM schedule. They map to σ by equal
signal-to-noise ratio, σ = 1 / (1 + √(ᾱ_t / (1 − ᾱ_t))) with SD's ᾱ (t_m = 281 → 0.438,
t_f = 1 → 0.040), which does not depend on the shift; the shift only decides which step of the
N-step table is nearest, and t_m snaps to it (SD3, 50 steps: σ = 0.4384, 11 steps left).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from .schedule import sd_alpha_bar

PREDICTION_TYPE = "flow"  # the network predicts the velocity v = eps - x_0


@dataclass(frozen=True, eq=False)
class FlowSchedule:
    """The descending σ of one ``num_inference_steps`` run and what stepping needs.

    Attributes:
        timesteps: (S,) float32, 1000 σ_i: what the denoiser is called with (and the key a
            stored trajectory's steps are found by).
        sigmas: (S,) float32, σ_i, descending from 1.
        next_sigmas: (S,) float32, σ_{i+1}, 0 after the last step.
        num_inference_steps: S.
        shift: the scheduler's shift k (None with dynamic shifting, where ``mu`` decided it).
    """

    timesteps: torch.Tensor
    sigmas: torch.Tensor
    next_sigmas: torch.Tensor
    num_inference_steps: int
    shift: float | None = None
    prediction_type = PREDICTION_TYPE

    def index_of(self, timestep) -> int:
        """Position of ``timestep`` (1000 σ, as stored) in ``timesteps``; ValueError if absent."""
        matches = (self.timesteps == torch.as_tensor(float(timestep), dtype=torch.float32)
                   ).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {float(timestep):g} (1000 sigma) is not on the "
                             f"{self.num_inference_steps}-step flow schedule; choose one of "
                             f"{[round(t, 3) for t in self.timesteps.tolist()]}")
        return int(matches[0, 0])

    def nearest_index(self, sigma: float) -> int:
        """The step whose σ is nearest to ``sigma`` (ties: the earlier, noisier step)."""
        return int((self.sigmas.double() - float(sigma)).abs().argmin())

    def posterior_std(self, timestep) -> float:
        """1.0: the Euler step stores its residual unscaled (kept for the DDPM interface)."""
        self.index_of(timestep)
        return 1.0

    def noised(self, x0: torch.Tensor, eps: torch.Tensor, keep: slice) -> torch.Tensor:
        """x_i = (1 − σ_i) x₀ + σ_i ε_i for the steps ``keep``: x0 (C, h, w), eps (S', C, h, w)
        -> (S', C, h, w) float32."""
        sigma = self.sigmas[keep].to(x0.device).view(-1, 1, 1, 1)
        return (1 - sigma) * x0 + sigma * eps

    def step(self, model_output: torch.Tensor, timestep, latents: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
        """x_i -> x_{i+1} = x_i + (σ_{i+1} − σ_i) v + r, float32, batched over dim 0.

        ``model_output`` is the velocity v; ``noise`` the stored residual r (zeros: the plain
        Euler step of ``FlowMatchEulerDiscreteScheduler``).
        """
        i = self.index_of(timestep)
        velocity, sample, residual = model_output.float(), latents.float(), noise.float()
        previous = sample + (self.next_sigmas[i] - self.sigmas[i]) * velocity
        return previous + residual


def is_flow_scheduler(scheduler) -> bool:
    """Whether ``scheduler`` is a flow-matching (``FlowMatch*``) scheduler."""
    return type(scheduler).__name__.startswith("FlowMatch")


def flow_schedule(scheduler, num_inference_steps: int, *, mu: float | None = None,
                  sigmas=None) -> FlowSchedule:
    """The :class:`FlowSchedule` of a ``FlowMatchEulerDiscreteScheduler`` for
    ``num_inference_steps`` (its ``set_timesteps`` on a copy; the scheduler is not changed).

    Args:
        mu: the dynamic shift (FLUX.1-dev: from the number of image tokens); required when the
            scheduler's config has ``use_dynamic_shifting``.
        sigmas: the unshifted (num_inference_steps,) σ the scheduler shifts, as a pipeline
            passes them (FLUX's: ``linspace(1, 1 / N, N)``); None: the scheduler's own spacing.
    """
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) \
            or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got "
                         f"{num_inference_steps!r}")
    config = scheduler.config
    dynamic = bool(config.get("use_dynamic_shifting", False))
    if dynamic and mu is None:
        raise ValueError("this scheduler shifts its sigmas by the image size "
                         "(use_dynamic_shifting); pass mu (the model's architecture computes it "
                         "from the number of image tokens)")
    working = copy.deepcopy(scheduler)
    extra = {} if sigmas is None else {"sigmas": list(sigmas)}
    if dynamic:
        working.set_timesteps(num_inference_steps, mu=mu, **extra)
    else:
        working.set_timesteps(num_inference_steps, **extra)
    sigmas = working.sigmas.detach().float().cpu()               # (S + 1,), ends at 0
    return FlowSchedule(timesteps=(sigmas[:-1] * config.num_train_timesteps).clone(),
                        sigmas=sigmas[:-1].clone(), next_sigmas=sigmas[1:].clone(),
                        num_inference_steps=num_inference_steps,
                        shift=None if dynamic else float(config.get("shift", 1.0)))


def sd_equivalent_sigma(sd_timestep: int) -> float:
    """σ with the signal-to-noise ratio of ``sd_timestep`` on SD's schedule:
    1 / (1 + √(ᾱ / (1 − ᾱ))) (281 -> 0.4379, 1 -> 0.0397). Independent of any shift."""
    if isinstance(sd_timestep, bool) or not isinstance(sd_timestep, int) \
            or not 0 <= sd_timestep < 1000:
        raise ValueError(f"an SD timestep is an integer in [0, 1000), got {sd_timestep!r}")
    alpha_bar = sd_alpha_bar(sd_timestep)
    return 1.0 / (1.0 + math.sqrt(alpha_bar / (1.0 - alpha_bar)))


def check_sigma(sigma, argument: str) -> float:
    """``sigma`` as a float in (0, 1); ValueError naming ``argument`` otherwise."""
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) \
            or not 0.0 < float(sigma) < 1.0:
        raise ValueError(f"{argument} must be a noise level sigma in (0, 1), got {sigma!r}")
    return float(sigma)


@dataclass(frozen=True)
class FlowTime:
    """Where t_m lands on a flow schedule.

    Attributes:
        sigma: the σ asked for (given, or mapped from the SD timestep by SNR).
        snapped_sigma: the nearest σ of the schedule, the one denoising starts from.
        index: its step in the schedule; ``steps_left`` = S − index steps follow.
        timestep: 1000 σ of that step (the key the trajectory stores).
        source: how ``sigma`` was obtained, for messages.
    """

    sigma: float
    snapped_sigma: float
    index: int
    steps_left: int
    timestep: float
    source: str

    def describe(self) -> str:
        return (f"{self.source} -> sigma {self.sigma:.3f}, snapped to the schedule's "
                f"{self.snapped_sigma:.4f} ({self.steps_left} steps left)")


def modulation_time(schedule: FlowSchedule, cfg) -> FlowTime:
    """t_m on ``schedule``: ``cfg.modulation_sigma`` if given, else ``cfg.modulation_timestep``
    mapped by SNR; snapped to the nearest step."""
    if cfg.modulation_sigma is not None:
        sigma = check_sigma(cfg.modulation_sigma, "modulation_sigma")
        source = f"modulation_sigma={sigma:g}"
    else:
        sigma = sd_equivalent_sigma(cfg.modulation_timestep)
        source = f"t_m={cfg.modulation_timestep} (SD's noise level, equal SNR)"
    index = schedule.nearest_index(sigma)
    return FlowTime(sigma=sigma, snapped_sigma=float(schedule.sigmas[index]), index=index,
                    steps_left=schedule.num_inference_steps - index,
                    timestep=float(schedule.timesteps[index]), source=source)


def feature_sigma(cfg) -> float:
    """σ of the feature pass: ``cfg.feature_sigma`` if given, else ``cfg.feature_timestep``
    mapped by SNR (t_f = 1 -> 0.0397). Not snapped: one denoiser call needs no schedule step."""
    if cfg.feature_sigma is not None:
        return check_sigma(cfg.feature_sigma, "feature_sigma")
    return sd_equivalent_sigma(cfg.feature_timestep)
