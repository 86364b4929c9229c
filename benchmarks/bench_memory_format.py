"""Channels-last against contiguous memory format for SD 1.4's UNet call and VAE decode.

    python benchmarks/bench_memory_format.py --device cpu --image-size 256 --batch 9
    python benchmarks/bench_memory_format.py --device cpu --toyworld   # a whole ToyWorld segment

Times one UNet call on ``--batch`` elements and one VAE decode of 4 latents, in each memory
format, twice in alternation (best of 3 each time), on the full-size SD 1.4 architecture with
random weights (cost does not depend on weight values); with ``--toyworld``, one whole
``segment`` of a held-out scene with the trained ToyWorld at its defaults. Prints a Markdown
table. Channels-last is the layout that convolution kernels such as cuDNN's tensor-core ones
prefer; EmerDiff uses it only if this shows that it pays.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from bench_segment import DEFAULT_CONFIGS, build_sd14_random, synchronize_device
from emerdiff_lab.models import resolve_dtype

FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def best_seconds(fn, device: torch.device, repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        synchronize_device(device)
        start = time.perf_counter()
        fn()
        synchronize_device(device)
        best = min(best, time.perf_counter() - start)
    return best


@torch.no_grad()
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=9, help="elements of the UNet call")
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS)
    parser.add_argument("--toyworld", action="store_true",
                        help="time ToyWorld's segment instead of SD 1.4's UNet and VAE")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), resolve_dtype(args.dtype)
    if args.toyworld:
        return time_toyworld_segment(device, dtype)

    model = build_sd14_random(args.configs, device, dtype)
    side = args.image_size // model.vae_scale_factor
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(args.batch, 4, side, side, generator=generator).to(device, dtype)
    timesteps = torch.full((args.batch,), 281, device=device)
    embeds = model.prompt_embeds("").expand(args.batch, -1, -1)

    print(f"SD 1.4 architecture, random weights, {args.device}, {args.dtype}, "
          f"{args.image_size} px, best of 3\n")
    print(f"| memory format | UNet call, {args.batch} elements, s | VAE decode, 4 images, s |")
    print("|---|---|---|")
    for name in [*FORMATS, *FORMATS]:  # alternated, so that drift hits both alike
        fmt = FORMATS[name]
        model.unet.to(memory_format=fmt)
        model.vae.to(memory_format=fmt)
        sample = latents.contiguous(memory_format=fmt)
        unet_s = best_seconds(lambda: model.unet(sample, timesteps, encoder_hidden_states=embeds),
                              device)
        vae_s = best_seconds(lambda: model.vae.decode(sample[:4]), device)
        print(f"| {name} | {unet_s:.3f} | {vae_s:.3f} |", flush=True)


def time_toyworld_segment(device: torch.device, dtype: torch.dtype) -> None:
    """Best-of-3 seconds of one ``segment`` (K = 6, the model's defaults) per memory format."""
    import emerdiff_lab as edl
    from emerdiff_lab.toyworld import scenes

    model = edl.load_model("toyworld", device=device, dtype=dtype)
    image, _ = scenes.generate_scene(scenes.HELDOUT_SEED_START)
    print(f"ToyWorld (trained), {device}, {dtype}, 64 px, segment at the defaults, best of 3, "
          f"{torch.get_num_threads()} thread(s)\n")
    print("| memory format | segment, s |")
    print("|---|---|")
    for name in [*FORMATS, *FORMATS]:
        model.unet.to(memory_format=FORMATS[name])
        seconds = best_seconds(lambda: edl.segment(model, image, model.default_config,
                                                   progress=False), device)
        print(f"| {name} | {seconds:.3f} |", flush=True)


if __name__ == "__main__":
    main()
