"""Stops a computation whose values stopped being numbers, naming the stage and the likely cause.

A NaN or inf anywhere between the image and the labels used to go unnoticed: ``argmax`` of an
all-NaN map is 0, so a too large lambda or a float16 overflow gave a label map of zeros with exit
code 0. Each stage output (features, the inversion trajectory, the modulated latents, the decoded
images, the difference maps) is checked once with one ``isfinite().all()``: a reduction over a
tensor the stage has just written, negligible beside the network calls that made it.
"""

from __future__ import annotations

import torch


class NonFiniteError(ValueError):
    """A stage produced NaN or inf. A ValueError: the settings or the dtype, not a bug."""


def check_finite(values: torch.Tensor, stage: str, cause: str) -> torch.Tensor:
    """``values`` unchanged if every element is finite; else NonFiniteError saying which
    ``stage`` (e.g. "the decoded images") holds NaN or inf and the likely ``cause``."""
    if not bool(torch.isfinite(values).all()):
        nan = int(torch.isnan(values).sum())
        raise NonFiniteError(f"{stage} hold non-finite values ({nan} NaN, "
                             f"{values.numel() - nan - int(torch.isfinite(values).sum())} inf of "
                             f"{values.numel()}), so no labels were made: {cause}")
    return values


def overflow_cause(dtype: torch.dtype, network: str) -> str:
    """The likely cause when ``network`` (e.g. "the VAE decoder") ran in ``dtype`` and gave
    non-finite values from finite inputs."""
    name = str(dtype).replace("torch.", "")
    if dtype == torch.float16:
        return (f"{network} overflowed in float16 (its largest value is 65504; a known problem "
                f"of float16 VAEs and UNets); load the model in float32 or bfloat16")
    return f"{network} overflowed in {name}; check the weights and try float32"


def strength_cause(strength: float, dtype: torch.dtype) -> str:
    """The likely cause when the modulated denoising gave non-finite latents."""
    name = str(dtype).replace("torch.", "")
    return (f"lambda (modulation_strength {strength:g}) is most likely too large for {name} "
            f"(the paper uses 10); use a smaller one"
            + (", or float32 weights" if dtype == torch.float16 else ""))
