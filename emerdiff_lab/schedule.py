"""The DDPM schedule as a frozen value: the timesteps of a run, their alpha-bars, and the step.

A trajectory is stepped from the schedule it was made on, never from a scheduler object's
mutable state (diffusers' schedulers hold the length of the last ``set_timesteps`` call, which
any other call changes). The step is diffusers' ``DDIMScheduler.step`` with eta = 1 (the DDPM
posterior), written out with the same float32 operations in the same order, so its results are
the scheduler's bit for bit.

Timesteps mean noise levels only on the schedule they belong to: the paper's t_m = 281 is a
timestep of SD's scaled-linear betas. :func:`equivalent_timestep` maps such a timestep onto
another schedule by alpha-bar (the signal fraction), which is what the noise level is.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

# The schedule the paper's timesteps are defined on: SD 1.x/2.x's scaled-linear betas.
SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
            "num_train_timesteps": 1000}
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


@dataclass(frozen=True, eq=False)
class DDPMSchedule:
    """The descending timesteps of one ``num_inference_steps`` run and what stepping needs.

    Attributes:
        timesteps: (S,) int64, descending (981, 961, ..., 1 for SD at 50 steps).
        alpha_bars: (S,) float32, alpha-bar at each timestep.
        previous_alpha_bars: (S,) float32, alpha-bar of the step each timestep goes to (the
            scheduler's final alpha-bar after the last one: alpha-bar at t = 0 for SD).
        previous_timesteps: (S,) int64, the timestep each step goes to (negative after the last).
        prediction_type: what the network predicts: "epsilon", "v_prediction" or "sample".
        num_inference_steps: S.
        clip_sample_range: clamp the predicted x_0 to +-range (None: no clamping, SD's setting).
    """

    timesteps: torch.Tensor
    alpha_bars: torch.Tensor
    previous_alpha_bars: torch.Tensor
    previous_timesteps: torch.Tensor
    prediction_type: str
    num_inference_steps: int
    clip_sample_range: float | None = None

    def index_of(self, timestep: int) -> int:
        """Position of ``timestep`` in ``timesteps``; ValueError if it is not on the schedule."""
        matches = (self.timesteps == int(timestep)).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {timestep} is not on the {self.num_inference_steps}-step "
                             f"schedule; choose one of {self.timesteps.tolist()}")
        return int(matches[0, 0])

    def posterior_std(self, timestep: int) -> float:
        """sigma_t of the DDPM step from ``timestep`` (eta = 1), in float64."""
        i = self.index_of(timestep)
        alpha_bar = self.alpha_bars[i].double()
        alpha_bar_prev = self.previous_alpha_bars[i].double()
        variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)
        return float(variance.sqrt())

    def noised(self, x0: torch.Tensor, eps: torch.Tensor, keep: slice) -> torch.Tensor:
        """x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps_t for the steps ``keep``: x0 (C, h, w),
        eps (S', C, h, w) -> (S', C, h, w) float32."""
        alpha_bar = self.alpha_bars[keep].to(x0.device).view(-1, 1, 1, 1)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps

    def step(self, model_output: torch.Tensor, timestep: int, latents: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
        """x_t -> x_{t-1} = mu_t(x_t) + sigma_t * noise, float32, batched over dim 0.

        The arithmetic of ``DDIMScheduler.step(..., eta=1, variance_noise=noise)``, from the
        stored alpha-bars.
        """
        i = self.index_of(timestep)
        model_output, sample, noise = model_output.float(), latents.float(), noise.float()
        alpha_prod_t, alpha_prod_t_prev = self.alpha_bars[i], self.previous_alpha_bars[i]
        beta_prod_t = 1 - alpha_prod_t
        if self.prediction_type == "epsilon":
            pred_original = (sample - beta_prod_t ** 0.5 * model_output) / alpha_prod_t ** 0.5
            pred_epsilon = model_output
        elif self.prediction_type == "sample":
            pred_original = model_output
            pred_epsilon = (sample - alpha_prod_t ** 0.5 * pred_original) / beta_prod_t ** 0.5
        else:  # v_prediction
            pred_original = alpha_prod_t ** 0.5 * sample - beta_prod_t ** 0.5 * model_output
            pred_epsilon = alpha_prod_t ** 0.5 * model_output + beta_prod_t ** 0.5 * sample
        if self.clip_sample_range is not None:
            pred_original = pred_original.clamp(-self.clip_sample_range, self.clip_sample_range)
        beta_prod_t_prev = 1 - alpha_prod_t_prev
        variance = (beta_prod_t_prev / beta_prod_t) * (1 - alpha_prod_t / alpha_prod_t_prev)
        std = 1.0 * variance ** 0.5
        direction = (1 - alpha_prod_t_prev - std ** 2) ** 0.5 * pred_epsilon
        previous = alpha_prod_t_prev ** 0.5 * pred_original + direction
        return previous + std * noise


def ddpm_schedule(scheduler, num_inference_steps: int) -> DDPMSchedule:
    """The :class:`DDPMSchedule` of a diffusers DDIM-type scheduler for ``num_inference_steps``.

    The scheduler is not changed: its timesteps are set on a copy.

    Raises:
        ValueError: ``num_inference_steps`` is not a positive integer, or the scheduler
            thresholds its predictions or predicts something other than epsilon, v or x_0.
    """
    if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) \
            or num_inference_steps < 1:
        raise ValueError(f"num_inference_steps must be a positive integer, got "
                         f"{num_inference_steps!r}")
    config = scheduler.config
    if config.get("thresholding", False):
        raise ValueError("the scheduler uses dynamic thresholding, which the edit-friendly "
                         "inversion cannot invert exactly; set thresholding=False")
    if config.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got "
                         f"{config.prediction_type!r}")
    working = copy.deepcopy(scheduler)
    working.set_timesteps(num_inference_steps)
    timesteps = working.timesteps.clone().long().cpu()
    previous = timesteps - config.num_train_timesteps // num_inference_steps
    alphas = scheduler.alphas_cumprod.float().cpu()
    final = torch.as_tensor(scheduler.final_alpha_cumprod, dtype=torch.float32)
    previous_alpha = torch.stack([alphas[p] if p >= 0 else final for p in previous.tolist()])
    clip = config.get("clip_sample_range", 1.0) if config.get("clip_sample", False) else None
    return DDPMSchedule(timesteps=timesteps, alpha_bars=alphas[timesteps],
                        previous_alpha_bars=previous_alpha, previous_timesteps=previous,
                        prediction_type=config.prediction_type,
                        num_inference_steps=num_inference_steps, clip_sample_range=clip)


def sd_alpha_bar(timestep: int) -> float:
    """alpha-bar of ``timestep`` on SD's scaled-linear schedule (the paper's noise levels)."""
    betas = torch.linspace(SD_BETAS["beta_start"] ** 0.5, SD_BETAS["beta_end"] ** 0.5,
                           SD_BETAS["num_train_timesteps"], dtype=torch.float32) ** 2
    return float(torch.cumprod(1.0 - betas, dim=0)[int(timestep)])


def equivalent_timestep(scheduler, sd_timestep: int,
                        num_inference_steps: int | None = None) -> int:
    """The timestep of ``scheduler`` whose noise level (alpha-bar) is nearest to that of
    ``sd_timestep`` on SD's schedule: among the ``num_inference_steps`` schedule's timesteps, or
    among all training timesteps when None.

    On SD's own betas (SD 1.x/2.x, SDXL) this is ``sd_timestep`` itself (when it lies on the
    schedule). On another schedule (e.g. linear betas) t_m = 281 means "as much noise as SD has
    at 281", not the same integer.
    """
    if isinstance(sd_timestep, bool) or not isinstance(sd_timestep, int) \
            or not 0 <= sd_timestep < SD_BETAS["num_train_timesteps"]:
        raise ValueError(f"an SD timestep is an integer in [0, 1000), got {sd_timestep!r}")
    target = sd_alpha_bar(sd_timestep)
    if num_inference_steps is None:
        candidates = torch.arange(len(scheduler.alphas_cumprod))
        alpha_bars = scheduler.alphas_cumprod.float().cpu()
    else:
        schedule = ddpm_schedule(scheduler, num_inference_steps)
        candidates, alpha_bars = schedule.timesteps, schedule.alpha_bars
    return int(candidates[int((alpha_bars.double() - target).abs().argmin())])
