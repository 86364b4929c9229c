#!/usr/bin/env python
"""Trains the ToyWorld pixel-space diffusion UNet on freshly generated scenes (epsilon loss).

Resumable: every --checkpoint-minutes the run writes OUT/checkpoint.pt (model, EMA, optimiser,
step) and OUT/toyworld.safetensors (EMA weights, float16); running the same command again resumes
from the checkpoint. Scenes are drawn from seeds derived from the step number, and the noise
from a generator seeded by the step, so a resumed run sees the same data as an unbroken one.
OUT/loss.csv logs step, loss, elapsed seconds.

    OMP_NUM_THREADS=1 nice -n 10 python scripts/train_toyworld.py --out runs/toyworld \
        --minutes 60 --export emerdiff_lab/weights/toyworld.safetensors
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import os
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from emerdiff_lab.io import atomic_file, atomic_path, write_text
from emerdiff_lab.toyworld.model import (
    SCHEDULER_CONFIG,
    build_text_encoder,
    build_unet,
    null_embedding,
    state_dict_for_saving,
)
from emerdiff_lab.toyworld.scenes import HELDOUT_SEED_START as TRAIN_SEED_LIMIT
from emerdiff_lab.toyworld.scenes import generate_batch


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("runs/toyworld"), help="run folder")
    p.add_argument("--minutes", type=float, default=60.0,
                   help="wall-clock budget of this invocation (a resumed run gets it again)")
    p.add_argument("--max-steps", type=int, default=None, help="stop at this total step count")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=6e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--checkpoint-minutes", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0, help="weight and noise seed")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--export", type=Path, default=None,
                   help="also copy the final EMA weights (float16 safetensors) here")
    p.add_argument("--export-only", action="store_true",
                   help="write --export from OUT/checkpoint.pt without training")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.lr <= 0 or args.minutes <= 0:
        p.error("--batch-size, --lr and --minutes must be positive")
    return args


def noise_batch(x0: torch.Tensor, step: int, seed: int, alphas_cumprod: torch.Tensor):
    """Noisy inputs for one step: returns ``(x_t, t, eps)``; x0 (B, 3, H, W) in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    ab = alphas_cumprod[t].view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t, eps


def scenes_for_step(step: int, batch_size: int, size: int = 64) -> torch.Tensor:
    """(B, 3, size, size) float32 in [-1, 1], the training scenes of ``step``."""
    first = (step * batch_size) % TRAIN_SEED_LIMIT
    images, _ = generate_batch(range(first, first + batch_size), size)
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file

    args.out.mkdir(parents=True, exist_ok=True)
    unet = build_unet(args.seed).train()
    ema = copy.deepcopy(unet).eval().requires_grad_(False)
    text_encoder, tokenizer = build_text_encoder()
    context = null_embedding(text_encoder, tokenizer)             # (1, 77, 32), fixed condition
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
        print(f"resumed from {checkpoint} at step {step} ({trained_seconds / 60:.1f} min)")

    def save() -> None:
        with atomic_file(checkpoint) as handle:  # never a half-written checkpoint
            torch.save({"unet": unet.state_dict(), "ema": ema.state_dict(),
                        "optimizer": optimizer.state_dict(), "step": step,
                        "trained_seconds": trained_seconds, "args": vars(args)}, handle)
        with atomic_path(args.out / "toyworld.safetensors") as tmp:
            save_file(state_dict_for_saving(ema, context), str(tmp))
        write_text(args.out / "run.json", json.dumps({
            "step": step, "batch_size": args.batch_size, "trained_minutes": trained_seconds / 60,
            "lr": args.lr, "ema_decay": args.ema_decay, "seed": args.seed,
            "threads": args.threads, "machine": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__}, indent=2))

    if args.export_only:
        if args.export is None or not checkpoint.exists():
            raise SystemExit("--export-only needs --export and an existing OUT/checkpoint.pt")
        with atomic_path(args.export) as tmp:
            save_file(state_dict_for_saving(ema, context), str(tmp))
        print(f"exported EMA weights of step {step} to {args.export} "
              f"({args.export.stat().st_size / 1e6:.2f} MB)")
        return

    log_path = args.out / "loss.csv"
    new_log = not log_path.exists()
    # Appended row by row, outside the atomic writer, so a resumed run continues the log; a
    # kill can cut only the last row.
    with open(log_path, "a", newline="") as log:
        writer = csv.writer(log)
        if new_log:
            writer.writerow(["step", "loss", "trained_seconds"])
        start = time.time()
        last_save = start
        bar = tqdm(initial=step, total=args.max_steps, desc="toyworld", mininterval=10,
                   unit="step")
        smoothed = None
        while time.time() - start < args.minutes * 60:
            if args.max_steps is not None and step >= args.max_steps:
                break
            tick = time.time()
            x0 = scenes_for_step(step, args.batch_size)
            x_t, t, eps = noise_batch(x0, step, args.seed, alphas_cumprod)
            prediction = unet(x_t, t, encoder_hidden_states=context.expand(len(t), -1, -1)).sample
            loss = torch.nn.functional.mse_loss(prediction, eps)
            for group in optimizer.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / args.warmup_steps)
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
            writer.writerow([step, f"{value:.5f}", f"{trained_seconds:.1f}"])
            bar.update(1)
            bar.set_postfix(loss=f"{smoothed:.4f}", refresh=False)
            if time.time() - last_save > args.checkpoint_minutes * 60:
                log.flush()
                save()
                last_save = time.time()
        bar.close()
    save()
    print(f"stopped at step {step}, {trained_seconds / 60:.1f} min trained, "
          f"smoothed loss {smoothed}")
    if args.export is not None:
        args.export.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(args.export) as tmp:
            save_file(state_dict_for_saving(ema, context), str(tmp))
        print(f"exported EMA weights to {args.export} "
              f"({args.export.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
