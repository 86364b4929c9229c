"""Optional ``torch.compile`` of the parts of a model whose code EmerDiff never changes.

Regional compilation: the UNet's ResNet blocks (most of its convolution FLOPs) and the VAE
decoder (2K decodes per image) are compiled one module at a time. The transformer blocks are left
eager on purpose: they run EmerDiff's attention processors, whose per-call Python state (the
injection mode, the offsets present only at t_m, the captured layers, a new processor object per
call) would make dynamo re-trace them over and over.
"""

from __future__ import annotations

import torch

from .models import EmerDiffModel

COMPILABLE_PARTS = ("unet_resnets", "vae_decoder")
# Every ResnetBlock2D shares one code object, so each (channels, resolution, batch) variant of the
# UNet's blocks counts against one recompile limit; past PyTorch's default of 8 the rest would
# silently run eager.
RECOMPILE_LIMIT = 64


def compile_model(model: EmerDiffModel, *, parts=COMPILABLE_PARTS, backend: str = "inductor",
                  mode: str | None = None, dynamic: bool | None = None) -> EmerDiffModel:
    """Compiles ``parts`` of ``model`` in place with ``torch.compile`` and returns it.

    Compilation happens lazily at each part's first call (tens of seconds: time it apart from
    the runs it speeds up) and again for new shapes, until dynamo marks the dimensions that
    change as dynamic. Outputs equal the eager model's up to floating-point reassociation.
    Whether it pays depends on the device: ``benchmarks/bench_compile.py`` measures it, and
    BENCHMARKS.md holds the results.

    Args:
        parts: any of ``"unet_resnets"`` (every ``ResnetBlock2D`` of the UNet) and
            ``"vae_decoder"`` (ignored for a pixel-space model, which has no VAE).
        backend, mode, dynamic: passed to ``torch.compile`` (e.g. ``mode="max-autotune"`` on a
            GPU; ``backend="aot_eager"`` traces without generating code, to check a model cheaply).
    """
    if isinstance(parts, str) or set(parts) - set(COMPILABLE_PARTS):
        raise ValueError(f"parts must be a collection of {COMPILABLE_PARTS}, got {parts!r}")
    dynamo_config = torch._dynamo.config
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, RECOMPILE_LIMIT)
    options = {"backend": backend, "mode": mode, "dynamic": dynamic}
    if "unet_resnets" in parts:
        resnets = [module for module in model.unet.modules()
                   if type(module).__name__ == "ResnetBlock2D"]
        if not resnets:
            raise ValueError("this UNet has no ResnetBlock2D modules to compile")
        for module in resnets:
            module.compile(**options)
    if "vae_decoder" in parts and model.vae is not None:
        model.vae.decoder.compile(**options)
    return model
