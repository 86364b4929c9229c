#!/usr/bin/env python
"""Trains ToyWorld v2: ToyWorld-latent's UNet (warm start) and a small CLIP text encoder, jointly,
on captioned scenes; ToyWorld-latent's VAE stays frozen.

    # 1. scenes -> latents (posterior means x scaling factor) and content counts, in chunks of
    #    512 seeds; resumable (finished chunks are skipped)
    OMP_NUM_THREADS=1 nice -n 10 python scripts/train_toyworld_v2.py cache --num-scenes 16384
    # 2. train (epsilon MSE, SD 1.x schedule, caption dropout, EMA); the same command resumes
    OMP_NUM_THREADS=1 nohup nice -n 10 python scripts/train_toyworld_v2.py train --minutes 60 \
        > runs/toyworld_v2/train.log 2>&1 &
    # 3. the fp16 weight file of the last checkpoint (EMA UNet and text encoder, VAE)
    python scripts/train_toyworld_v2.py export --to emerdiff_lab/weights/toyworld_v2.safetensors

Captions are written at every step from the cached counts (:func:`emerdiff_lab.toyworld.captions.
caption`, a random phrasing per sample), so the phrasings vary across epochs; a random 20% of
them are replaced by ``""``. OUT/loss.csv logs step, loss, lr and trained seconds.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import numpy as np
import torch

from emerdiff_lab.io import atomic_path
from emerdiff_lab.toyworld import training
from emerdiff_lab.toyworld.captions import NUM_PHRASINGS, caption, scene_content
from emerdiff_lab.toyworld.scenes256 import generate_scene_objects

# The run folder, git-ignored (runs/), as for the other ToyWorld training scripts.
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "runs" / "toyworld_v2"
CHUNK = 512
RELOAD_STEPS = 50   # steps between looks for newly cached chunks


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=("cache", "train", "export"))
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help="run folder (default: runs/toyworld_v2, git-ignored)")
    p.add_argument("--num-scenes", type=int, default=16384, help="cache: training seeds 0..N-1")
    p.add_argument("--reverse", action="store_true",
                   help="cache: take the chunks from the last one (a second worker)")
    p.add_argument("--init", type=Path, default=None,
                   help="train: weight file whose VAE and UNet start the run (default: the "
                        "packaged toyworld-latent)")
    p.add_argument("--minutes", type=float, default=60.0, help="train: wall-clock budget")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-4, help="UNet learning rate")
    p.add_argument("--text-lr", type=float, default=1e-3, help="text encoder learning rate")
    p.add_argument("--caption-dropout", type=float, default=0.2)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--ema-decay", type=float, default=0.999)
    p.add_argument("--checkpoint-minutes", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--to", type=Path, default=None, help="export: the weight file to write")
    return p.parse_args(argv)


def _latent_vae(init: Path | None):
    from emerdiff_lab.toyworld import latent_model

    unet, vae, _, _ = latent_model._components_cpu(str(init or latent_model.WEIGHTS_PATH))
    return unet, vae


@torch.no_grad()
def cache(args) -> None:
    """Writes OUT/cache/chunk_<first seed>.pt per 512 seeds: ``latents`` (n, 4, 32, 32) float16
    (scaled posterior means of the noisy 128 px scenes) and ``counts`` (n, 9) int16."""
    _, vae = _latent_vae(args.init)
    scaling = vae.config.scaling_factor
    folder = args.out / "cache"
    folder.mkdir(parents=True, exist_ok=True)
    firsts = range(0, args.num_scenes, CHUNK)
    for first in reversed(firsts) if args.reverse else firsts:   # a second worker from the end
        path = folder / f"chunk_{first:06d}.pt"
        if path.exists() or (args.reverse and Path(f"{path}.tmp").exists()):
            continue
        tick, latents, counts = time.time(), [], []
        seeds = range(first, min(first + CHUNK, args.num_scenes))
        for i in range(0, len(seeds), 16):
            scenes = [generate_scene_objects(s, 128) for s in seeds[i:i + 16]]
            x = torch.from_numpy(np.stack([s[0] for s in scenes])).permute(0, 3, 1, 2)
            latents.append((vae.encode(x.float() / 127.5 - 1).latent_dist.mean * scaling).half())
            counts += [scene_content(labels, objects) for _, labels, objects in scenes]
        # Not the atomic writer: the ".tmp" name marks this chunk as taken for a --reverse worker.
        torch.save({"seeds": torch.tensor(list(seeds)), "latents": torch.cat(latents),
                    "counts": torch.from_numpy(np.stack(counts)).to(torch.int16)},
                   str(path) + ".tmp")
        Path(str(path) + ".tmp").replace(path)
        print(f"{path.name}: {len(seeds)} scenes, {time.time() - tick:.0f} s", flush=True)


def load_cache(out: Path) -> tuple[torch.Tensor, np.ndarray]:
    """Every cached chunk: ``(latents (N, 4, 32, 32) float16, counts (N, 9) int)``."""
    chunks = [torch.load(p) for p in sorted((out / "cache").glob("chunk_*.pt"))]
    if not chunks:
        raise FileNotFoundError(f"no cached chunks in {out / 'cache'}: run the cache stage first")
    return (torch.cat([c["latents"] for c in chunks]),
            torch.cat([c["counts"] for c in chunks]).numpy())


def captions_for_step(counts: np.ndarray, idx: torch.Tensor, step: int, seed: int,
                      dropout: float) -> list[str]:
    """One caption per sample, a random phrasing each, ``""`` with probability ``dropout``;
    drawn from a generator seeded by the step (a resumed run writes the same captions)."""
    rng = np.random.default_rng([seed, step, 7])
    phrasings = rng.integers(0, NUM_PHRASINGS, len(idx))
    dropped = rng.random(len(idx)) < dropout
    return ["" if d else caption(counts[i], int(p))
            for i, p, d in zip(idx.tolist(), phrasings, dropped)]


def train(args) -> None:
    from emerdiff_lab.toyworld.captioned_model import build_caption_text_encoder

    data = {}

    def refresh_cache(step: int) -> None:
        # The cache may still be growing (a background cache stage): reload it now and then.
        if not data or (step % RELOAD_STEPS == 0 and len(data["counts"]) < args.num_scenes):
            data["latents"], data["counts"] = load_cache(args.out)
            print(f"step {step}: {len(data['latents'])} cached scenes", flush=True)

    unet, vae = _latent_vae(args.init)
    unet = copy.deepcopy(unet).train().requires_grad_(True)   # the cached one stays frozen
    text_encoder, tokenizer = build_caption_text_encoder(args.seed)
    run = training.Run(args.out, {"unet": unet, "text_encoder": text_encoder},
                       {"unet": args.lr, "text_encoder": args.text_lr}, args)

    def loss_of(step: int) -> torch.Tensor:
        refresh_cache(step)
        x_t, t, eps, idx = training.noised_batch(data["latents"], step, args.batch_size,
                                                 args.seed, run.alphas_cumprod)
        prompts = captions_for_step(data["counts"], idx, step, args.seed, args.caption_dropout)
        ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                        truncation=True, return_tensors="pt").input_ids
        context = text_encoder(ids)[0]
        prediction = unet(x_t, t, encoder_hidden_states=context).sample
        return torch.nn.functional.mse_loss(prediction, eps)

    run.train(loss_of, lambda: export_tensors(run, vae))


def export_tensors(run, vae) -> dict:
    """The loadable float16 weight dict: VAE, EMA UNet, EMA text encoder, scaling factor."""
    from emerdiff_lab.toyworld.latent_model import state_dict_for_saving

    return state_dict_for_saving(vae=vae, unet=run.ema["unet"],
                                 text_encoder=run.ema["text_encoder"],
                                 scaling_factor=vae.config.scaling_factor)


def export(args) -> None:
    from safetensors.torch import save_file

    from emerdiff_lab.toyworld.captioned_model import build_caption_text_encoder

    unet, vae = _latent_vae(args.init)
    text_encoder, _ = build_caption_text_encoder(args.seed)
    run = training.Run(args.out, {"unet": unet, "text_encoder": text_encoder},
                       {"unet": args.lr, "text_encoder": args.text_lr}, args)
    if args.to is None:
        raise SystemExit("export needs --to <weight file>")
    with atomic_path(args.to) as tmp:
        save_file(export_tensors(run, vae), str(tmp))
    print(f"step {run.step}: wrote {args.to} ({args.to.stat().st_size / 1e6:.2f} MB)")


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    {"cache": cache, "train": train, "export": export}[args.stage](args)


if __name__ == "__main__":
    main()
