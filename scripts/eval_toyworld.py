#!/usr/bin/env python
"""Held-out evaluation of EmerDiff on ToyWorld: trained model vs a random-weight control.

    # the table of the model card (test scenes; writes the recorded numbers the CI test checks)
    OMP_NUM_THREADS=1 python scripts/eval_toyworld.py table --n 16 --record
    # settings search on separate validation scenes (never the test scenes)
    OMP_NUM_THREADS=1 python scripts/eval_toyworld.py sweep --n 4

Scores are per-image Hungarian mIoU (emerdiff_lab.evaluation.metrics.hungarian_miou) against the
scenes' exact class maps, averaged over scenes, with the standard error over scenes; beside it,
under the same matching, boundary F-scores (``<method>_bf1``, ``_bf2``: theta 1 and 2 px at
128 px, so 0.5 and 1 px on these 64 px scenes; ``_bf2_agnostic``: all label changes).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from emerdiff_lab.io import write_text
from emerdiff_lab.toyworld.evaluation import (
    METHODS,
    VALIDATION_SEED_START,
    evaluate,
    heldout_scenes,
    nearest_upsample,
)
from emerdiff_lab.toyworld.model import WEIGHTS_PATH, load_toyworld

RECORDED_PATH = (Path(__file__).resolve().parents[1] / "emerdiff_lab" / "toyworld"
                 / "recorded_eval.json")
LABELS = {"masks": "k-means masks (nearest)", "naive": "naive bilinear upsampling",
          "emerdiff": "EmerDiff", "emerdiff_norm": "EmerDiff, maps / own max"}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def models(weights: Path, control_seed: int) -> dict:
    return {"trained": load_toyworld(weights=weights),
            "random": load_toyworld(weights=weights, random_weights=True, seed=control_seed)}


def markdown_table(results: dict) -> str:
    """The model card's table from ``{"trained": evaluate(...), "random": evaluate(...)}``."""
    n = results["trained"]["n"]
    header = (f"| per-image Hungarian mIoU, {n} held-out scenes (mean ± s.e.) | trained | "
              f"random-weight control |")
    lines = [header, "|---|---|---|"]
    for m in METHODS:
        cells = [f"{r['mean'][m]:.3f} ± {r['sem'][m]:.3f}" for r in
                 (results["trained"], results["random"])]
        lines.append(f"| {LABELS[m]} | {cells[0]} | {cells[1]} |")
    for m in ("emerdiff", "emerdiff_norm"):
        cells = []
        for r in (results["trained"], results["random"]):
            gain = np.array(r["per_image"][m]) - np.array(r["per_image"]["naive"])
            cells.append(f"{gain.mean():+.3f} ± {gain.std(ddof=1) / np.sqrt(len(gain)):.3f}")
        lines.append(f"| gain of {LABELS[m]} over naive (paired) | {cells[0]} | {cells[1]} |")
    if "emerdiff_bf2" in results["trained"]["per_image"]:
        lines += ["", boundary_table(results)]
    return "\n".join(lines)


def boundary_table(results: dict) -> str:
    """Boundary F-scores (mean ± s.e.) of every method, and EmerDiff - naive on them with a
    paired 95% t-interval."""
    from emerdiff_lab.stats import paired_difference

    n = results["trained"]["n"]
    lines = [f"| boundary F-score, {n} held-out scenes at 64 px (theta 0.5 / 1 px) | trained "
             f"BF1 | trained BF2 | control BF1 | control BF2 |", "|---|---|---|---|---|"]
    for m in METHODS:
        cells = [f"{r['mean'][f'{m}_{k}']:.3f} ± {r['sem'][f'{m}_{k}']:.3f}"
                 for r in (results["trained"], results["random"]) for k in ("bf1", "bf2")]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells) + " |")
    cells = [paired_difference(r["per_image"][f"emerdiff_{k}"],
                               r["per_image"][f"naive_{k}"]).describe()
             for r in (results["trained"], results["random"]) for k in ("bf1", "bf2")]
    lines.append("| EmerDiff - naive (paired) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_table(args) -> None:
    results, seconds = {}, {}
    for name, model in models(args.weights, args.control_seed).items():
        tick = time.time()
        results[name] = evaluate(model, args.n, progress=not args.quiet)
        seconds[name] = time.time() - tick
    table = markdown_table(results)
    print(table)
    record = {"command": "OMP_NUM_THREADS=1 python " + " ".join(sys.argv),
              "weights_sha256": sha256(args.weights), "control_seed": args.control_seed,
              "seconds": seconds, "torch_threads": torch.get_num_threads(),
              "results": results, "markdown": table}
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, json.dumps(record, indent=1))
    if args.record:
        write_text(RECORDED_PATH, json.dumps(record, indent=1))
        print(f"recorded in {RECORDED_PATH}")


@torch.no_grad()
def activation_rms(model, pixels: torch.Tensor, cfg) -> dict[str, float]:
    """RMS over scenes, tokens and channels of the residual stream entering the modulation
    layer's transformer block and of the attention output (after to_out), at the modulation
    timestep: the scale that the offset lambda is added to. pixels (n, 3, S, S) in [0, 1]."""
    from emerdiff_lab.features import layer_names
    from emerdiff_lab.inversion import unet_predict

    _, name = layer_names(model, cfg, pixels.shape[-1])
    seen = {}

    def block_hook(module, inputs, output):
        seen["in"] = inputs[0].float().pow(2).mean().sqrt().item()

    def attention_hook(module, inputs, output):
        seen["out"] = output.float().pow(2).mean().sqrt().item()

    modules = dict(model.unet.named_modules())
    # The transformer block's input is the residual stream that the attention output (and the
    # offset) is added to; the attention layer itself sees it layer-normalised.
    handles = [modules[name.rsplit(".", 1)[0]].register_forward_hook(block_hook),
               modules[name].register_forward_hook(attention_hook)]
    values = {"in": [], "out": []}
    try:
        for image in pixels:
            x0 = model.encode(image[None])
            t = torch.tensor([cfg.modulation_timestep])
            noisy = model.scheduler.add_noise(x0, torch.randn(x0.shape, generator=torch.Generator(
            ).manual_seed(cfg.seed)), t)
            unet_predict(model, noisy, t, model.prompt_embeds(cfg.prompt))
            values["in"].append(seen["in"])
            values["out"].append(seen["out"])
    finally:
        for handle in handles:
            handle.remove()
    return {"layer": name, "residual_stream_rms": float(np.mean(values["in"])),
            "attention_output_rms": float(np.mean(values["out"]))}


def run_sweep(args) -> None:
    """Validation-scene search: mask mIoU over feature timesteps and feature layers (cheap), then
    EmerDiff over modulation timestep x strength for the trained model (a loop over configs on
    one Session per scene: one inversion to the deepest t_m)."""
    import emerdiff_lab as edl
    from emerdiff_lab.evaluation.metrics import hungarian_miou
    from emerdiff_lab.layers import find_semantic_block
    from emerdiff_lab.toyworld.evaluation import config_scores

    pixels, labels = heldout_scenes(args.n, start=VALIDATION_SEED_START)
    report = {"n": args.n, "start": VALIDATION_SEED_START, "masks": {}, "emerdiff": {}}
    pair = models(args.weights, args.control_seed)
    layers = find_semantic_block(pair["trained"].unet).cross_attention_layers
    for name, model in pair.items():
        for layer in layers:
            for t_f in (1, 101, 201, 401):
                cfg = model.default_config.replace(feature_timestep=t_f, feature_layer=layer)
                scores = [hungarian_miou(nearest_upsample(edl.kmeans_masks(
                    edl.extract_features(model, pixels[i], cfg), k=cfg.num_masks, seed=cfg.seed),
                    64), labels[i]).miou for i in range(args.n)]
                key = f"{name} {layer} t_f={t_f}"
                report["masks"][key] = float(np.mean(scores))
                print(f"masks  {key}: {np.mean(scores):.3f}", flush=True)
    model = pair["trained"]
    base = model.default_config
    report["activation_rms"] = activation_rms(model, pixels, base)
    print(f"modulation layer activation RMS (trained, t={base.modulation_timestep}): "
          f"{report['activation_rms']}", flush=True)
    grid = [(t_m, lam) for t_m in args.timesteps for lam in args.strengths]
    configs = {(t_m, lam, norm): base.replace(modulation_timestep=t_m, modulation_strength=lam,
                                              normalize_maps=norm)
               for t_m, lam in grid for norm in (False, True)}
    measured = config_scores(model, pixels, labels, configs, base, progress=not args.quiet)
    scores = {(t_m, lam): {"naive": measured["naive"], "emerdiff": measured[(t_m, lam, False)],
                           "emerdiff_norm": measured[(t_m, lam, True)]} for t_m, lam in grid}
    for (t_m, lam), s in scores.items():
        means = {k: float(np.mean(v)) for k, v in s.items()}
        report["emerdiff"][f"t_m={t_m} lambda={lam}"] = means
        print(f"trained t_m={t_m} lambda={lam}: " +
              ", ".join(f"{k} {v:.3f}" for k, v in means.items()), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, json.dumps(report, indent=1))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("table", "sweep"))
    p.add_argument("--n", type=int, default=16, help="number of scenes")
    p.add_argument("--weights", type=Path, default=WEIGHTS_PATH)
    p.add_argument("--control-seed", type=int, default=0, help="random-weight control's seed")
    p.add_argument("--strengths", type=float, nargs="+", default=[3.0, 10.0, 30.0],
                   help="sweep: modulation strengths (lambda)")
    p.add_argument("--timesteps", type=int, nargs="+", default=[281, 481],
                   help="sweep: modulation timesteps (t_m), any on the schedule")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--record", action="store_true",
                   help="table: write emerdiff_lab/toyworld/recorded_eval.json (the CI reference)")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.n < 2:
        p.error("--n must be at least 2 (a standard error needs two scenes)")
    torch.set_num_threads(args.threads)
    run_table(args) if args.mode == "table" else run_sweep(args)


if __name__ == "__main__":
    main()
