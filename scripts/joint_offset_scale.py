"""The offset at an MM-DiT's modulation layer against what flows there: activation scale, the
AdaLN gate, and a lambda sweep (docs/architectures.md, "SD3 / SD3.5: joint attention").

    python scripts/joint_offset_scale.py [--model tiny-sd3] [--size 128] [--device cpu]

Prints, at t_m's snapped sigma: the RMS and largest magnitude of the image tokens' attention
output after ``to_out`` at the modulation layer (what the offset c * M is added to), the mean
and largest |gate_msa| of that block (what multiplies both before the residual stream), and for
each lambda the mean |change of x0| per latent cell inside and outside a 2x2-token region and
their ratio. On "tiny-sd3" the weights are random: the numbers show mechanics only.
"""

from __future__ import annotations

import argparse

import torch

import emerdiff_lab as edl
from emerdiff_lab import modulation
from emerdiff_lab.features import layer_names
from emerdiff_lab.inversion import modulation_timestep, unet_predict


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-sd3")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args(argv)
    model = edl.load_model(args.model, device=args.device, dtype=args.dtype)
    cfg = model.default_config.replace(num_inference_steps=20)
    image = edl.load_image(edl.sample_images()["chelsea"], size=args.size)
    inversion = edl.invert(model, image, cfg, progress=False)
    _, layer = layer_names(model, cfg, args.size)
    block = model.unet.get_submodule(layer.rsplit(".", 1)[0])
    start = inversion.index_of(modulation_timestep(model, inversion, cfg))
    seen = {}
    hooks = [model.unet.get_submodule(layer).register_forward_hook(
                 lambda module, inputs, out: seen.update(attention=out[0])),
             block.norm1.register_forward_hook(
                 lambda module, inputs, out: seen.update(gate=out[1]))]
    try:
        unet_predict(model, inversion.latents[start:start + 1],
                     inversion.timesteps[start:start + 1], inversion.condition)
    finally:
        for hook in hooks:
            hook.remove()
    attention, gate = seen["attention"].float(), seen["gate"].float()
    print(f"{model.model_id} at {args.size} px, layer {layer}, "
          f"{model.architecture.modulation_time(model, cfg).describe()}")
    print(f"attention output after to_out: rms {attention.pow(2).mean().sqrt():.4g}, "
          f"max |.| {attention.abs().max():.4g}")
    print(f"gate_msa: mean |.| {gate.abs().mean():.4g}, max |.| {gate.abs().max():.4g}")
    grid = modulation.region_grid_size(model, inversion, cfg)
    region = torch.zeros(grid, dtype=torch.bool)
    region[grid[0] // 4:grid[0] // 4 + 2, grid[1] // 4:grid[1] // 4 + 2] = True
    stride = model.architecture.geometry(model).layer_downsample(layer)
    cells = region.repeat_interleave(stride, 0).repeat_interleave(stride, 1)
    print("lambda, mean |dx0| in region, outside, ratio")
    for strength in (0.1, 1.0, 10.0, 100.0):
        latents, _ = modulation._modulated_latents(
            model, inversion, region[None], torch.tensor([1.0]),
            cfg.replace(modulation_strength=strength), path="batched", progress=False)
        change = (latents[0] - inversion.latents[-1]).abs().sum(0).cpu()
        inside, outside = float(change[cells].mean()), float(change[~cells].mean())
        print(f"{strength:g}, {inside:.4g}, {outside:.4g}, {inside / max(outside, 1e-30):.1f}")


if __name__ == "__main__":
    main()
