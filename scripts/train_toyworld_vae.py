#!/usr/bin/env python
"""Trains ToyWorld-latent's VAE (AutoencoderKL, factor 4) on 64 px crops of 128 px scenes.

Loss: L1 + L2 reconstruction of the noise-free render from the noisy one, plus a small KL term
(no perceptual network: none can be had offline); the decoder sees the posterior means (see
--sample-posterior), so the KL term acts as a small L2 penalty on the latents. Learning rate:
warm-up, then a cosine decay over the --minutes budget (so a run stopped by its budget ends at
a low rate). Resumable: every --checkpoint-minutes the run writes OUT/checkpoint.pt; the same
command resumes it. OUT/loss.csv logs step, loss terms and trained seconds. At the end the
script measures ``scaling_factor`` (1 / std of the posterior means over whole validation scenes)
and the PSNR of reconstructions of whole validation scenes against their noise-free renders, and
writes OUT/vae.safetensors.

    OMP_NUM_THREADS=1 nohup nice -n 19 .venv/bin/python scripts/train_toyworld_vae.py \
        --out runs/toyworld_latent/vae2 --minutes 33 --threads 1 \
        > runs/toyworld_latent/vae2.log 2>&1 &
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch

from emerdiff_lab.io import atomic_file, atomic_path, write_text
from emerdiff_lab.toyworld.evaluation import VALIDATION_SEED_START
from emerdiff_lab.toyworld.latent_model import IMAGE_SIZE, build_vae, state_dict_for_saving
from emerdiff_lab.toyworld.scenes256 import PIXEL_NOISE, generate_batch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/toyworld_latent/vae"))
    p.add_argument("--minutes", type=float, default=35.0, help="total training budget (minutes)")
    p.add_argument("--pool", type=int, default=768, help="training scenes held in memory")
    p.add_argument("--crop", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=8)
    # 1e-3 stalled at the MSE of a grey image (0.040, 14 dB) for 550 of 800 steps; overfitting one
    # batch of 8 crops for 120 steps reached 19.1 dB at 1e-3, 22.9 at 5e-4, 23.3 at 3e-4 and
    # 21.7 at 1e-4 (MODEL_CARD.md, ToyWorld-latent).
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--kl-weight", type=float, default=1e-4, help="weight of the per-element KL")
    p.add_argument("--sample-posterior", action="store_true",
                   help="decode posterior samples (SD's recipe) instead of the means; at this "
                        "budget the unit initial noise drowned the latents: MSE stalled at 0.045 "
                        "for 300 steps. EmerDiff encodes with the mean, so the means are trained")
    p.add_argument("--checkpoint-minutes", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-scenes", type=int, default=16)
    return p.parse_args(argv)


def scene_pool(path: Path, n: int) -> np.ndarray:
    """(n, S, S, 3) uint8 noise-free training scenes (seeds 0..n-1), cached at ``path``."""
    if path.exists():
        pool = np.load(path)
        if len(pool) >= n:
            return pool[:n]
    pool, _ = generate_batch(range(n), IMAGE_SIZE, clean=True)
    with atomic_file(path) as handle:
        np.save(handle, pool)
    return pool


def crops(pool: np.ndarray, step: int, batch: int, size: int, seed: int) -> torch.Tensor:
    """(B, 3, size, size) float32 in [0, 1]: random crops with random horizontal flips; the
    step number seeds the choice, so a resumed run sees the same batches."""
    rng = np.random.default_rng(seed * 1_000_003 + step)
    idx = rng.integers(0, len(pool), batch)
    ys, xs = rng.integers(0, pool.shape[1] - size + 1, (2, batch))
    out = np.stack([pool[i, y:y + size, x:x + size] for i, y, x in zip(idx, ys, xs)])
    flip = rng.random(batch) < 0.5
    out[flip] = out[flip, :, ::-1]
    return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 255


def noisy(clean: torch.Tensor, step: int, seed: int) -> torch.Tensor:
    """The render's sensor noise (std PIXEL_NOISE), quantised like a uint8 scene."""
    generator = torch.Generator().manual_seed(seed * 7_919 + step)
    x = clean + PIXEL_NOISE * torch.randn(clean.shape, generator=generator)
    return (x.clamp(0, 1) * 255).round() / 255


@torch.no_grad()
def measure(vae, n: int) -> dict:
    """``scaling_factor`` (1 / std of posterior means) and PSNR (dB, against the noise-free
    render) on ``n`` whole validation scenes (IMAGE_SIZE px) (never test scenes)."""
    seeds = range(VALIDATION_SEED_START, VALIDATION_SEED_START + n)
    noisy_images, _ = generate_batch(seeds, IMAGE_SIZE)
    clean_images, _ = generate_batch(seeds, IMAGE_SIZE, clean=True)
    x = torch.from_numpy(noisy_images).permute(0, 3, 1, 2).float() / 255
    ref = torch.from_numpy(clean_images).permute(0, 3, 1, 2).float() / 255
    vae.eval()
    means, psnrs = [], []
    for i in range(n):
        mean = vae.encode(x[i:i + 1] * 2 - 1).latent_dist.mean
        rec = ((vae.decode(mean).sample + 1) / 2).clamp(0, 1)
        means.append(mean)
        psnrs.append(float(-10 * torch.log10(((rec - ref[i:i + 1]) ** 2).mean())))
    latents = torch.cat(means)
    return {"scaling_factor": float(1 / latents.std()), "latent_mean": float(latents.mean()),
            "psnr_db": float(np.mean(psnrs)), "psnr_db_sem": float(np.std(psnrs, ddof=1)
                                                                  / math.sqrt(n)), "n": n}


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    pool = scene_pool(args.out.parent / "vae_pool.npy", args.pool)
    vae = build_vae(args.seed).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.lr, weight_decay=0.0)
    step, trained_seconds = 0, 0.0
    checkpoint = args.out / "checkpoint.pt"
    if checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False)
        vae.load_state_dict(state["vae"])
        optimizer.load_state_dict(state["optimizer"])
        step, trained_seconds = state["step"], state["trained_seconds"]
        print(f"resumed at step {step} ({trained_seconds / 60:.1f} min)", flush=True)

    def save() -> None:
        with atomic_file(checkpoint) as handle:  # never a half-written checkpoint
            torch.save({"vae": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                        "trained_seconds": trained_seconds, "args": vars(args)}, handle)

    budget = args.minutes * 60
    log_path = args.out / "loss.csv"
    new_log = not log_path.exists()
    # Appended row by row, outside the atomic writer, so a resumed run continues the log; a
    # kill can cut only the last row.
    with open(log_path, "a", newline="") as log:
        writer = csv.writer(log)
        if new_log:
            writer.writerow(["step", "loss", "l1", "mse", "kl", "lr", "trained_seconds"])
        last_save = time.time()
        while trained_seconds < budget:
            tick = time.time()
            target = crops(pool, step, args.batch_size, args.crop, args.seed)
            posterior = vae.encode(noisy(target, step, args.seed) * 2 - 1).latent_dist
            z = posterior.mean
            if args.sample_posterior:
                generator = torch.Generator().manual_seed(args.seed * 31 + step)
                z = z + posterior.std * torch.randn(z.shape, generator=generator)
            rec = (vae.decode(z).sample + 1) / 2
            l1 = (rec - target).abs().mean()
            mse = ((rec - target) ** 2).mean()
            kl = posterior.kl().mean() / posterior.mean[0].numel()  # per latent element
            loss = l1 + mse + args.kl_weight * kl
            frac = trained_seconds / budget
            lr = args.lr * min(1.0, (step + 1) / args.warmup_steps) * \
                (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            optimizer.step()
            step += 1
            trained_seconds += time.time() - tick
            writer.writerow([step, f"{loss.item():.5f}", f"{l1.item():.5f}", f"{mse.item():.6f}",
                             f"{kl.item():.4f}", f"{lr:.2e}", f"{trained_seconds:.1f}"])
            if step % 50 == 0:
                print(f"step {step} loss {loss.item():.4f} mse {mse.item():.5f} "
                      f"({trained_seconds / step:.2f} s/step)", flush=True)
            if time.time() - last_save > args.checkpoint_minutes * 60:
                log.flush()
                save()
                last_save = time.time()
    save()
    stats = measure(vae, args.val_scenes)
    print(json.dumps(stats), flush=True)
    with atomic_path(args.out / "vae.safetensors") as tmp:
        save_file(state_dict_for_saving(vae=vae, scaling_factor=stats["scaling_factor"]),
                  str(tmp))
    write_text(args.out / "run.json", json.dumps(
        {"step": step, "trained_minutes": trained_seconds / 60, **vars(args) | {"out": str(
            args.out)}, "validation": stats}, indent=1))


if __name__ == "__main__":
    main()
