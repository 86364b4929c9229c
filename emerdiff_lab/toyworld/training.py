"""A small resumable training loop for ToyWorld's diffusion models (used by ToyWorld v2).

:class:`Run` owns the optimiser, the EMA copies, the checkpoint and the loss log of a set of
named modules trained together; the caller gives it the loss of one step. The learning rate
warms up, then follows a cosine to a tenth of its peak over a **wall-clock** budget (on a shared
CPU the number of steps a budget buys is not known in advance). A checkpoint is written every few
minutes and at the end, atomically, with a loadable weight file beside it; running the same
command again resumes from it.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import time
from pathlib import Path

import torch

from ..io import atomic_file, atomic_path, write_text

__all__ = ["Run", "cosine_lr", "noised_batch"]


def cosine_lr(base: float, step: int, warmup_steps: int, fraction: float) -> float:
    """Linear warm-up over ``warmup_steps``, then a cosine from ``base`` to ``base / 10`` as
    ``fraction`` (of the time budget spent) goes from 0 to 1."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    return base * warm * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, fraction))))


def noised_batch(latents: torch.Tensor, step: int, batch: int, seed: int,
                 alphas_cumprod: torch.Tensor):
    """``(x_t, t, eps, idx)`` of one step: latents ``latents[idx]`` (random horizontal flips),
    t uniform in [0, T), and noise; all drawn from a generator seeded by the step, so a resumed
    run sees the same data. Shapes: (B, C, H, W), (B,), (B, C, H, W), (B,)."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
    idx = torch.randint(0, len(latents), (batch,), generator=generator)
    x0 = latents[idx].float()
    flip = torch.rand(batch, generator=generator) < 0.5
    x0[flip] = x0[flip].flip(-1)
    t = torch.randint(0, len(alphas_cumprod), (batch,), generator=generator)
    eps = torch.randn(x0.shape, generator=generator)
    ab = alphas_cumprod[t].view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps, t, eps, idx


class Run:
    """The state of one training run in ``out``: modules, EMA copies, AdamW, step, seconds.

    Args:
        out: the run folder (``checkpoint.pt``, ``loss.csv``, ``weights.safetensors``,
            ``run.json``); resumed from when a checkpoint is there.
        modules: name -> module trained (train mode, gradients on).
        lrs: name -> peak learning rate of that module's parameter group.
        args: the command's namespace: ``minutes``, ``warmup_steps``, ``ema_decay``,
            ``checkpoint_minutes``; recorded in ``run.json``.
    """

    def __init__(self, out: Path, modules: dict, lrs: dict, args):
        from diffusers import DDIMScheduler

        from .latent_model import SCHEDULER_CONFIG

        self.out, self.modules, self.lrs, self.args = Path(out), modules, lrs, args
        self.out.mkdir(parents=True, exist_ok=True)
        self.ema = {n: copy.deepcopy(m).eval().requires_grad_(False) for n, m in modules.items()}
        self.optimizer = torch.optim.AdamW(
            [{"params": list(m.parameters()), "name": n} for n, m in modules.items()],
            lr=min(lrs.values()), weight_decay=0.0)
        self.alphas_cumprod = DDIMScheduler.from_config(SCHEDULER_CONFIG).alphas_cumprod.float()
        self.step, self.trained_seconds = 0, 0.0
        self.checkpoint = self.out / "checkpoint.pt"
        if self.checkpoint.exists():
            state = torch.load(self.checkpoint, weights_only=False)
            for n in modules:
                modules[n].load_state_dict(state["modules"][n])
                self.ema[n].load_state_dict(state["ema"][n])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step, self.trained_seconds = state["step"], state["trained_seconds"]
            self._drop_log_rows_after_checkpoint()
            print(f"resumed at step {self.step} ({self.trained_seconds / 60:.1f} min)", flush=True)

    def _drop_log_rows_after_checkpoint(self) -> None:
        """A run stopped between checkpoints logged steps that the resumed run repeats: keep
        only the log rows up to the checkpoint's step, so each step is logged once."""
        log_path = self.out / "loss.csv"
        if not log_path.exists():
            return
        with open(log_path, newline="") as f:
            rows = list(csv.reader(f))
        kept = rows[:1] + [r for r in rows[1:] if r and int(r[0]) <= self.step]
        if len(kept) < len(rows):
            with atomic_file(log_path, "w", newline="") as f:
                csv.writer(f).writerows(kept)

    def save(self, weights: dict) -> None:
        """Checkpoint (atomically: never a half-written one) and the loadable weight file."""
        from safetensors.torch import save_file

        with atomic_file(self.checkpoint) as handle:
            torch.save({"modules": {n: m.state_dict() for n, m in self.modules.items()},
                        "ema": {n: m.state_dict() for n, m in self.ema.items()},
                        "optimizer": self.optimizer.state_dict(), "step": self.step,
                        "trained_seconds": self.trained_seconds}, handle)
        with atomic_path(self.out / "weights.safetensors") as tmp:
            save_file(weights, str(tmp))
        write_text(self.out / "run.json", json.dumps(
            {"step": self.step, "trained_minutes": self.trained_seconds / 60,
             **{k: str(v) for k, v in vars(self.args).items()}}, indent=1))

    def _update(self, loss: torch.Tensor) -> float:
        budget = self.args.minutes * 60
        lr_scale = cosine_lr(1.0, self.step, self.args.warmup_steps,
                             self.trained_seconds / budget)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lrs[group["name"]] * lr_scale
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for module in self.modules.values():
            torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
        self.optimizer.step()
        # EMA with a warm-up, so that early exports are not dominated by the starting weights.
        decay = min(self.args.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for name, module in self.modules.items():
                for e, p in zip(self.ema[name].parameters(), module.parameters()):
                    e.lerp_(p, 1 - decay)
        return lr_scale

    def train(self, loss_of, weights) -> None:
        """Steps until the budget (``args.minutes`` of step time) is spent.

        Args:
            loss_of: step -> scalar loss tensor (the batch drawn from the step number).
            weights: () -> the float16 tensor dict of the weight file to write at checkpoints.
        """
        log_path = self.out / "loss.csv"
        new_log = not log_path.exists()
        with open(log_path, "a", newline="") as log:
            writer = csv.writer(log)
            if new_log:
                writer.writerow(["step", "loss", "lr_scale", "trained_seconds"])
            last_save, smoothed = time.time(), None
            while self.trained_seconds < self.args.minutes * 60:
                tick = time.time()
                loss = loss_of(self.step)
                lr_scale = self._update(loss)
                self.step += 1
                self.trained_seconds += time.time() - tick
                value = loss.item()
                smoothed = value if smoothed is None else 0.98 * smoothed + 0.02 * value
                writer.writerow([self.step, f"{value:.5f}", f"{lr_scale:.4f}",
                                 f"{self.trained_seconds:.1f}"])
                if self.step % 25 == 0:
                    log.flush()
                    print(f"step {self.step} loss {smoothed:.4f} "
                          f"({self.trained_seconds / self.step:.2f} s/step)", flush=True)
                if time.time() - last_save > self.args.checkpoint_minutes * 60:
                    self.save(weights())
                    last_save = time.time()
        self.save(weights())
        print(f"stopped at step {self.step}, {self.trained_seconds / 60:.1f} min, "
              f"smoothed loss {smoothed}", flush=True)
