#!/usr/bin/env python
"""Trains ToyWorld-latent's UNet on 32x32 latents cached once from the trained VAE.

Two stages:

    # 1. encode the training scenes with the trained VAE (posterior means x scaling_factor)
    .venv/bin/python scripts/train_toyworld_latent_unet.py cache \
        --vae runs/toyworld_latent/vae/vae.safetensors
    # 2. train (epsilon MSE, SD 1.x schedule, EMA); the same command resumes from the checkpoint
    OMP_NUM_THREADS=2 nohup nice -n 19 .venv/bin/python scripts/train_toyworld_latent_unet.py \
        train --minutes 60 --export emerdiff_lab/weights/toyworld_latent.safetensors \
        > runs/toyworld_latent/unet.log 2>&1 &

Training scenes come from the ``*.npy`` files of noise-free 128 px renders in --data (seeds 0 up,
written by train_toyworld_vae.py's pool and by the ``scenes`` stage); the sensor noise of
``generate_scene`` is added before encoding, so the UNet learns the latents of the images it will
be given. Every --checkpoint-minutes the run writes OUT/checkpoint.pt and
OUT/toyworld_latent.safetensors (VAE + EMA UNet + condition, float16: a loadable weight file).
OUT/loss.csv logs step, loss, lr and trained seconds.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from emerdiff_lab.io import atomic_file, atomic_path, write_text
from emerdiff_lab.toyworld.latent_model import (
    IMAGE_SIZE,
    SCHEDULER_CONFIG,
    build_unet,
    build_vae,
    condition,
    state_dict_for_saving,
)
from emerdiff_lab.toyworld.scenes256 import PIXEL_NOISE, generate_batch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=("scenes", "cache", "train"))
    p.add_argument("--data", type=Path, default=Path("runs/toyworld_latent"))
    p.add_argument("--out", type=Path, default=Path("runs/toyworld_latent/unet"))
    p.add_argument("--vae", type=Path, default=Path("runs/toyworld_latent/vae/vae.safetensors"))
    p.add_argument("--first-seed", type=int, default=512, help="scenes: first seed to render")
    p.add_argument("--num-scenes", type=int, default=512, help="scenes: how many to render")
    p.add_argument("--minutes", type=float, default=60.0, help="total training budget")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--checkpoint-minutes", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", type=Path, default=None,
                   help="train: start a fresh run from the ``unet.*`` weights of this file (e.g. a "
                        "UNet trained on an earlier VAE's latents) instead of random weights")
    p.add_argument("--export", type=Path, default=None,
                   help="train: also write the final weight file here")
    return p.parse_args(argv)


def load_vae(path: Path):
    """The trained VAE (float32, eval) and its scaling factor from train_toyworld_vae.py's file."""
    from safetensors.torch import load_file

    tensors = load_file(path)
    scaling = float(tensors["vae_scaling_factor"][0])
    vae = build_vae(scaling_factor=scaling)
    vae.load_state_dict({k[4:]: v.float() for k, v in tensors.items() if k.startswith("vae.")})
    return vae.eval().requires_grad_(False), scaling


def render_scenes(args) -> None:
    """Writes --num-scenes noise-free training scenes from --first-seed to --data."""
    images, _ = generate_batch(range(args.first_seed, args.first_seed + args.num_scenes),
                               IMAGE_SIZE, clean=True)
    with atomic_file(args.data / f"scenes_{args.first_seed}.npy") as handle:
        np.save(handle, images)


@torch.no_grad()
def cache_latents(args) -> None:
    """Encodes every scene file of --data into --data/latents.pt: (N, 4, 32, 32) float16,
    already multiplied by the VAE's scaling factor (unit variance)."""
    vae, scaling = load_vae(args.vae)
    files = sorted(args.data.glob("*.npy"))
    latents = []
    generator = torch.Generator().manual_seed(args.seed)
    tick = time.time()
    for path in files:
        images = np.load(path)
        for i in range(0, len(images), 8):
            x = torch.from_numpy(images[i:i + 8]).permute(0, 3, 1, 2).float() / 255
            x = (x + PIXEL_NOISE * torch.randn(x.shape, generator=generator)).clamp(0, 1)
            x = (x * 255).round() / 255  # the noisy uint8 scene that generate_scene returns
            latents.append((vae.encode(x * 2 - 1).latent_dist.mean * scaling).half())
        print(f"{path.name}: {sum(len(z) for z in latents)} latents, "
              f"{time.time() - tick:.0f} s", flush=True)
    latents = torch.cat(latents)
    with atomic_file(args.data / "latents.pt") as handle:
        torch.save({"latents": latents, "files": [p.name for p in files],
                    "vae": str(args.vae)}, handle)
    print(f"cached {tuple(latents.shape)}, std {latents.float().std():.3f}, "
          f"mean {latents.float().mean():.3f}", flush=True)


def batch_for_step(latents: torch.Tensor, step: int, batch: int, seed: int,
                   alphas_cumprod: torch.Tensor):
    """``(x_t, t, eps)`` of one step: random latents (random horizontal flips), uniform t, and
    noise, all drawn from a generator seeded by the step (a resumed run sees the same data)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    idx = torch.randint(0, len(latents), (batch,), generator=generator)
    x0 = latents[idx].float()
    flip = torch.rand(batch, generator=generator) < 0.5
    x0[flip] = x0[flip].flip(-1)
    t = torch.randint(0, len(alphas_cumprod), (batch,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    ab = alphas_cumprod[t].view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t, eps


def train(args) -> None:
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    latents = torch.load(args.data / "latents.pt")["latents"]
    vae, scaling = load_vae(args.vae)
    context = condition()                                        # (1, 77, 32)
    unet = build_unet(args.seed).train()
    if args.init is not None:
        from safetensors.torch import load_file

        unet.load_state_dict({k[5:]: v.float() for k, v in load_file(args.init).items()
                              if k.startswith("unet.")})
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    alphas_cumprod = DDIMScheduler.from_config(SCHEDULER_CONFIG).alphas_cumprod.float()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=0.0)
    step, trained_seconds = 0, 0.0
    checkpoint = args.out / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        unet.load_state_dict(state["unet"])
        ema.load_state_dict(state["ema"])
        optimizer.load_state_dict(state["optimizer"])
        step, trained_seconds = state["step"], state["trained_seconds"]
        print(f"resumed at step {step} ({trained_seconds / 60:.1f} min)", flush=True)

    def weights() -> dict:
        return state_dict_for_saving(vae=vae, unet=ema, context=context, scaling_factor=scaling)

    def save() -> None:
        with atomic_file(checkpoint) as handle:  # never a half-written checkpoint
            torch.save({"unet": unet.state_dict(), "ema": ema.state_dict(),
                        "optimizer": optimizer.state_dict(), "step": step,
                        "trained_seconds": trained_seconds, "args": vars(args)}, handle)
        with atomic_path(args.out / "toyworld_latent.safetensors") as tmp:
            save_file(weights(), str(tmp))
        write_text(args.out / "run.json", json.dumps(
            {"step": step, "trained_minutes": trained_seconds / 60, "num_latents": len(latents),
             **{k: str(v) for k, v in vars(args).items()}}, indent=1))

    budget = args.minutes * 60
    log_path = args.out / "loss.csv"
    new_log = not log_path.exists()
    # Appended row by row, outside the atomic writer, so a resumed run continues the log; a
    # kill can cut only the last row.
    with open(log_path, "a", newline="") as log:
        writer = csv.writer(log)
        if new_log:
            writer.writerow(["step", "loss", "lr", "trained_seconds"])
        last_save, smoothed = time.time(), None
        while trained_seconds < budget:
            tick = time.time()
            x_t, t, eps = batch_for_step(latents, step, args.batch_size, args.seed,
                                         alphas_cumprod)
            prediction = unet(x_t, t, encoder_hidden_states=context.expand(len(t), -1, -1)).sample
            loss = torch.nn.functional.mse_loss(prediction, eps)
            # Warm-up, then cosine to a tenth over the budget (time-based: the budget is time).
            lr = args.lr * min(1.0, (step + 1) / args.warmup_steps) * \
                (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, trained_seconds / budget))))
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
            optimizer.step()
            # EMA with a warm-up, so that early exports are not dominated by the random init.
            decay = min(args.ema_decay, (1 + step) / (10 + step))
            with torch.no_grad():
                for e, p in zip(ema.parameters(), unet.parameters()):
                    e.lerp_(p, 1 - decay)
            step += 1
            trained_seconds += time.time() - tick
            value = loss.item()
            smoothed = value if smoothed is None else 0.98 * smoothed + 0.02 * value
            writer.writerow([step, f"{value:.5f}", f"{lr:.2e}", f"{trained_seconds:.1f}"])
            if step % 25 == 0:
                log.flush()
                print(f"step {step} loss {smoothed:.4f} ({trained_seconds / step:.2f} s/step)",
                      flush=True)
            if time.time() - last_save > args.checkpoint_minutes * 60:
                save()
                last_save = time.time()
    save()
    print(f"stopped at step {step}, {trained_seconds / 60:.1f} min, smoothed loss {smoothed}")
    if args.export is not None:
        args.export.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.export) as tmp:
            save_file(weights(), str(tmp))
        print(f"exported to {args.export} ({args.export.stat().st_size / 1e6:.2f} MB)")


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.data.mkdir(parents=True, exist_ok=True)
    {"scenes": render_scenes, "cache": cache_latents, "train": train}[args.stage](args)


if __name__ == "__main__":
    main()
