"""Drawing images from a pixel-space model with the ancestral DDPM sampler (to see what it
learned)."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from ..inversion import ddpm_step, schedule, unet_predict


@torch.no_grad()
def sample(model, n: int, *, seed: int = 0, num_inference_steps: int = 50, prompt: str = "",
           progress: bool = True) -> torch.Tensor:
    """``n`` images generated from pure noise with the model's DDPM schedule (eta = 1).

    Args:
        model: an :class:`~emerdiff_lab.EmerDiffModel` (ToyWorld or any other; a VAE decodes).
        n: number of images.
        seed: seeds the initial noise and every step's noise.
        num_inference_steps: schedule length (50: timesteps 981, 961, ..., 1).
        prompt: the condition (ToyWorld was trained on the empty prompt only).

    Returns:
        (n, 3, H, W) float32 in [0, 1] on the CPU; H = W = the UNet's sample size times the
        VAE factor (64 for ToyWorld).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer (number of images), got {n!r}")
    size = model.unet.config.sample_size
    channels = model.unet.config.in_channels
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn((n, channels, size, size), generator=generator).to(model.device)
    embeds = model.prompt_embeds(prompt)
    for t in tqdm(schedule(model, num_inference_steps).tolist(), desc="sample",
                  disable=not progress):
        prediction = unet_predict(model, latents, torch.full((n,), t), embeds)
        noise = torch.randn(latents.shape, generator=generator).to(model.device)
        latents = ddpm_step(model, prediction, t, latents, noise, num_inference_steps)
    return model.decode(latents).cpu()
