#!/usr/bin/env python
"""Held-out evaluation of ToyWorld v2 (issue 22's aims table) and its settings search.

    # settings (t_m, lambda, blur) chosen on validation scenes, never the test scenes
    python scripts/eval_toyworld_v2.py sweep --n 8 --blurs 1 2 4 8 --out runs/toyworld_v2/eval
    # per-scene scores of the trained model and the random control (resumable JSON lines)
    python scripts/eval_toyworld_v2.py scenes --which trained --n 48   # --out: default below
    python scripts/eval_toyworld_v2.py scenes --which random --n 48
    # the aims table; --record writes emerdiff_lab/toyworld/recorded_eval_v2.json (CI re-checks it)
    python scripts/eval_toyworld_v2.py summary --out runs/toyworld_v2/eval --record
    # figures/toyworld_v2_samples.png (unconditional and captioned samples)
    python scripts/eval_toyworld_v2.py figure
    # does the UNet use its caption? (epsilon MSE: own caption, empty prompt, another's)
    python scripts/eval_toyworld_v2.py caption-use --n 48

Scores: per-image Hungarian mIoU (EmerDiff, naive, masks, colour baselines), their boundary
F-scores under the same matching (``<method>_bf1``, ``_bf2``: theta 1 and 2 px; ``_bf2_agnostic``:
all label changes) and open-vocabulary mIoU (:mod:`emerdiff_lab.toyworld.evaluation_v2`);
differences paired over the same scenes with 95% t-intervals
(:func:`emerdiff_lab.stats.paired_difference`). The random control is a random-weight UNet
(seed 0) with the trained VAE and text encoder. The sweep picks t_m, lambda and blur by
:data:`emerdiff_lab.toyworld.evaluation.SETTING_RULE` (mIoU first, then boundary F-score).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import textwrap
import time
from pathlib import Path

import numpy as np
import torch

from emerdiff_lab.io import atomic_file, write_text
from emerdiff_lab.stats import paired_difference, summarize
from emerdiff_lab.toyworld.captioned_model import WEIGHTS_PATH, load_toyworld_v2
from emerdiff_lab.toyworld.evaluation import VALIDATION_SEED_START
from emerdiff_lab.toyworld.evaluation_v2 import evaluate_scene, scene
from emerdiff_lab.toyworld.scenes256 import HELDOUT_SEED_START

ROOT = Path(__file__).resolve().parents[1]
RECORDED_PATH = ROOT / "emerdiff_lab" / "toyworld" / "recorded_eval_v2.json"
LATENT_RECORD = ROOT / "emerdiff_lab" / "toyworld" / "recorded_eval_latent.json"
SETTINGS_KEYS = ("modulation_timestep", "modulation_strength", "blur_sigma")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def chosen_config(model, out: Path):
    """The model's default config with the settings the sweep chose (``out/settings.json``)."""
    path = out / "settings.json"
    chosen = json.loads(path.read_text())["chosen"] if path.exists() else {}
    return model.default_config.replace(**{k: chosen[k] for k in SETTINGS_KEYS if k in chosen})


def run_sweep(args) -> None:
    """EmerDiff's Hungarian mIoU and boundary F-scores on validation scenes over t_m x lambda x
    blur (one session per scene: inversion and maps shared where the settings allow); writes
    out/settings.json with the setting SETTING_RULE picks (and the best by mIoU alone)."""
    from emerdiff_lab.toyworld.evaluation import SETTING_RULE, choose_setting, config_score_table
    from emerdiff_lab.toyworld.evaluation_latent import scenes

    model = load_toyworld_v2(weights=args.weights)
    base = model.default_config.replace(normalize_maps=False)
    grid = {json.dumps([t_m, strength, blur]): base.replace(
        modulation_timestep=t_m, modulation_strength=strength, blur_sigma=blur)
        for t_m in args.timesteps for strength in args.strengths for blur in args.blurs}
    images, labels = scenes(args.n, start=VALIDATION_SEED_START)
    table = config_score_table(model, images, labels, grid, base, progress=True)
    means = {key: {k: float(np.mean(v[key])) for k, v in table.items()}
             for key in ("miou", "bf1", "bf2")}
    best = choose_setting(table, grid)
    report = {"n": args.n, "start": VALIDATION_SEED_START, "weights": str(args.weights),
              "weights_sha256": sha256(args.weights), "mean_miou": means["miou"],
              "mean_bf1": means["bf1"], "mean_bf2": means["bf2"], "rule": SETTING_RULE,
              "chosen": dict(zip(SETTINGS_KEYS, json.loads(best))),
              "best_by_miou": dict(zip(SETTINGS_KEYS, json.loads(
                  max(grid, key=means["miou"].get))))}
    for key, value in sorted(means["miou"].items(), key=lambda kv: -kv[1]):
        print(f"mIoU {value:.3f}  BF 2 px {means['bf2'][key]:.3f}  t_m, lambda, blur = {key}")
    print(f"chosen ({SETTING_RULE}): {best}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "settings.json", json.dumps(report, indent=1))


def run_scenes(args) -> None:
    """Appends one JSON line per test scene to out/<which>.jsonl, skipping scenes already there."""
    model = load_toyworld_v2(weights=args.weights, random_weights=args.which == "random",
                             seed=args.control_seed)
    cfg = chosen_config(load_toyworld_v2(weights=args.weights), args.out)
    path = args.out / f"{args.which}.jsonl"
    args.out.mkdir(parents=True, exist_ok=True)
    done = {json.loads(line)["seed"] for line in path.open()} if path.exists() else set()
    for seed in range(HELDOUT_SEED_START, HELDOUT_SEED_START + args.n):
        if seed in done:
            continue
        tick = time.time()
        pixels, labels, text = scene(seed)
        scores = evaluate_scene(model, pixels, labels, text, cfg,
                                baselines=args.which == "trained")
        # Appended, not rewritten (outside the atomic writer): one JSON line per scene, so a
        # stopped run resumes at the next scene; a kill can cut only the last line.
        with path.open("a") as f:
            f.write(json.dumps({"seed": seed, "caption": text, "scores": scores,
                                "config": {k: getattr(cfg, k) for k in SETTINGS_KEYS},
                                "weights_sha256": sha256(args.weights),
                                "seconds": time.time() - tick}) + "\n")
        print(f"{args.which} {seed}: EmerDiff {scores['emerdiff']:.3f} (BF 2 px "
              f"{scores['emerdiff_bf2']:.3f}), naive {scores['naive']:.3f} (BF 2 px "
              f"{scores['naive_bf2']:.3f}), open-vocab {scores['ov_emerdiff']:.3f} "
              f"({time.time() - tick:.0f} s)", flush=True)


def _per_image(out: Path, which: str) -> tuple[list[int], dict[str, list[float]]]:
    rows = sorted((json.loads(line) for line in (out / f"{which}.jsonl").open()),
                  key=lambda r: r["seed"])
    return [r["seed"] for r in rows], {m: [r["scores"][m] for r in rows] for m in rows[0]["scores"]}


AIMS = (  # (label, method a, which a, method b, which b, aim on the mean, aim on the lower bound)
    ("no regression: EmerDiff v2 - EmerDiff toyworld-latent", "emerdiff", "trained",
     "emerdiff", "latent", None, -0.02),
    ("EmerDiff - naive (mIoU)", "emerdiff", "trained", "naive", "trained", 0.09, 0.0),
    ("EmerDiff - naive (boundary F-score, 2 px)", "emerdiff_bf2", "trained", "naive_bf2",
     "trained", 0.05, 0.0),
    ("k-means masks - cell-colour k-means", "masks", "trained", "cell_colour_kmeans", "trained",
     0.06, 0.0),
    ("open vocabulary: EmerDiff's masks - naive's", "ov_emerdiff", "trained", "ov_naive",
     "trained", 0.0, 0.0),
    ("open vocabulary (EmerDiff's masks): trained - random control", "ov_emerdiff", "trained",
     "ov_emerdiff", "random", 0.0, 0.0),
    ("guard: EmerDiff - pixel-colour k-means", "emerdiff", "trained", "pixel_kmeans", "trained",
     0.15, 0.0),
)


def summary(out: Path) -> dict:
    """The aims table (paired 95% intervals) from the per-scene files of ``out``."""
    seeds, scores = {}, {}
    for which in ("trained", "random"):
        if (out / f"{which}.jsonl").exists():
            seeds[which], scores[which] = _per_image(out, which)
    latent = json.loads(LATENT_RECORD.read_text())["results"]["trained"]["per_image"]
    n = len(seeds["trained"])
    if seeds["trained"] != list(range(HELDOUT_SEED_START, HELDOUT_SEED_START + n)):
        raise SystemExit("trained.jsonl must hold the first n test scenes")
    scores["latent"] = {m: v[:n] for m, v in latent.items()}
    aims = []
    for label, ma, wa, mb, wb, aim_mean, aim_low in AIMS:
        if ma not in scores.get(wa, {}) or mb not in scores.get(wb, {}):
            continue
        k = min(len(scores[wa][ma]), len(scores[wb][mb]))
        d = paired_difference(scores[wa][ma][:k], scores[wb][mb][:k])
        # An aim on the lower bound of 0 needs it above 0; the no-regression one allows -0.02.
        low_ok = d.ci_low > 0 if aim_low == 0.0 else d.ci_low >= aim_low
        met = low_ok and (aim_mean is None or d.mean >= aim_mean)
        aims.append({"aim": label, "n": d.n, "mean": d.mean, "sem": d.sem, "ci_low": d.ci_low,
                     "ci_high": d.ci_high, "aim_mean": aim_mean, "aim_ci_low": aim_low,
                     "met": bool(met), "text": d.describe()})
    controls = {}
    for which in ("trained", "random"):
        if which in scores:
            controls[which] = {m: summarize(v) for m, v in scores[which].items()}
    if "random" in scores:  # the same gains for the random control
        k = min(n, len(seeds["random"]))
        for label, ma, mb in (("EmerDiff - naive", "emerdiff", "naive"),
                              ("EmerDiff - naive (BF 2 px)", "emerdiff_bf2", "naive_bf2"),
                              ("masks - cell-colour k-means", "masks", "cell_colour_kmeans"),
                              ("open vocabulary EmerDiff - naive", "ov_emerdiff", "ov_naive")):
            # The colour baselines use no UNet: scored once, in the trained model's run.
            b = scores["random"].get(mb, scores["trained"].get(mb))
            controls.setdefault("random_paired", {})[label] = paired_difference(
                scores["random"][ma][:k], b[:k]).describe()
    return {"n": {w: len(s) for w, s in seeds.items()}, "aims": aims, "methods": controls,
            "per_image": scores}


BF_COLUMNS = (("bf1", "BF 1 px"), ("bf2", "BF 2 px"), ("bf2_agnostic", "BF 2 px, all changes"))


def _cell(s: dict | None) -> str:
    return f"{s['mean']:.3f} ± {s['sem']:.3f}" if s else ""


def markdown(report: dict) -> str:
    lines = ["| per-scene score (mean ± s.e.) | trained | random-weight UNet + trained VAE, "
             "text encoder |", "|---|---|---|"]
    trained, random = report["methods"]["trained"], report["methods"].get("random", {})
    boundary = {f"{m}_{key}" for m in trained for key, _ in BF_COLUMNS}
    for method, s in trained.items():
        if method not in boundary:
            lines.append(f"| {method} | {_cell(s)} | {_cell(random.get(method))} |")
    columns = [(who, key, title) for who, part in (("trained", trained), ("random", random))
               for key, title in BF_COLUMNS if any(k.endswith("_" + key) for k in part)]
    if columns:  # the boundary F-scores of the Hungarian methods, one row per method
        lines += ["", "| boundary F-score (mean ± s.e.) | "
                  + " | ".join(f"{title}, {who}" for who, _, title in columns) + " |",
                  "|---" * (len(columns) + 1) + "|"]
        for method in (m for m in trained if f"{m}_bf2" in trained):
            parts = {"trained": trained, "random": random}
            lines.append(f"| {method} | " + " | ".join(
                _cell(parts[who].get(f"{method}_{key}")) for who, key, _ in columns) + " |")
    lines += ["", "| aim (paired, 95% CI) | measured | aim | met |", "|---|---|---|---|"]
    for a in report["aims"]:
        target = (f"mean ≥ {a['aim_mean']:+.2f}, " if a["aim_mean"] else "") + \
            ("lower bound > 0" if a["aim_ci_low"] == 0.0 else f"lower bound ≥ {a['aim_ci_low']}")
        lines.append(f"| {a['aim']} | {a['text']} | {target} | {'yes' if a['met'] else 'no'} |")
    for label, text in report["methods"].get("random_paired", {}).items():
        lines.append(f"| random control: {label} | {text} | (control) | |")
    return "\n".join(lines)


def run_summary(args) -> None:
    report = summary(args.out)
    table = markdown(report)
    print(table)
    write_text(args.out / "summary.json", json.dumps(report | {"markdown": table}, indent=1))
    if args.record:
        rows = [json.loads(line) for line in (args.out / "trained.jsonl").open()]
        write_text(RECORDED_PATH, json.dumps(
            {"command": "python scripts/eval_toyworld_v2.py summary --record",
             "weights_sha256": rows[0]["weights_sha256"], "config": rows[0]["config"],
             "control_seed": args.control_seed, "torch_threads": torch.get_num_threads(),
             **{k: report[k] for k in ("n", "aims", "methods", "per_image")},
             "markdown": table}, indent=1))
        print(f"recorded {RECORDED_PATH}")


def run_caption_use(args) -> None:
    """out/caption_use.json: the epsilon MSE of the trained UNet on test scenes with their own
    caption, the empty prompt and another scene's caption, per band of t, with paired intervals
    (relative to the empty prompt's MSE) of own - empty and own - another."""
    from emerdiff_lab.toyworld.evaluation_v2 import caption_use_errors

    seeds = range(HELDOUT_SEED_START, HELDOUT_SEED_START + args.n)
    errors = caption_use_errors(load_toyworld_v2(weights=args.weights), seeds)
    own, empty = errors["own caption"], errors["empty prompt"]
    report = {"n_scenes": args.n, "weights_sha256": sha256(args.weights),
              "mse": {kind: {band: summarize(v) for band, v in e.items()}
                      for kind, e in errors.items()}, "relative_to_empty": {}}
    for other in ("empty prompt", "another scene's caption"):
        for band in own:
            scale = float(np.mean(empty[band]))
            d = paired_difference(np.array(own[band]) / scale,
                                  np.array(errors[other][band]) / scale)
            report["relative_to_empty"][f"own - {other}, t {band}"] = d.describe(digits=4)
    for label, text in report["relative_to_empty"].items():
        print(f"{label}: {text}")
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "caption_use.json", json.dumps(report, indent=1))


SAMPLE_CAPTIONS = ("three trees and a house on grass below mountains under the sky",
                   "a rock on sand by the water under the sky",
                   "two fences on grass by the water under the sky")


def run_figure(args) -> None:
    """figures/toyworld_v2_samples.png: 50-step DDPM samples (seed 0), unconditional and for
    three captions, beside test scenes with their own captions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from emerdiff_lab.toyworld import sample

    model = load_toyworld_v2(weights=args.weights)
    rows = [("unconditional (\"\")", sample(model, 4, prompt="", progress=False))]
    rows += [(text, sample(model, 4, prompt=text, progress=False)) for text in SAMPLE_CAPTIONS]
    fig, axes = plt.subplots(len(rows) + 1, 4, figsize=(9, 2.4 * (len(rows) + 1)))
    for j in range(4):
        pixels, _, text = scene(HELDOUT_SEED_START + j)
        axes[0, j].imshow(pixels.permute(1, 2, 0).numpy())
        axes[0, j].set_title(textwrap.fill(f"test scene: {text}", 34), fontsize=6)
    for i, (text, images) in enumerate(rows, start=1):
        for j in range(4):
            axes[i, j].imshow(images[j].permute(1, 2, 0).numpy())
        axes[i, 0].set_title(f"samples: {text}", fontsize=7, loc="left")
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"ToyWorld v2 (trained weights {sha256(args.weights)[:12]}), 128 px; samples: "
                 f"50-step DDPM, the same seed per column for every prompt", fontsize=9)
    out = ROOT / "figures" / "toyworld_v2_samples.png"
    with atomic_file(out) as handle:
        fig.savefig(handle, format="png", dpi=90, bbox_inches="tight")
    print(f"wrote {out}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("sweep", "scenes", "summary", "figure", "caption-use"))
    p.add_argument("--n", type=int, default=48, help="number of scenes")
    p.add_argument("--which", choices=("trained", "random"), default="trained")
    p.add_argument("--weights", type=Path, default=WEIGHTS_PATH)
    p.add_argument("--control-seed", type=int, default=0)
    p.add_argument("--timesteps", type=int, nargs="+", default=[281, 481])
    p.add_argument("--strengths", type=float, nargs="+", default=[30.0, 100.0])
    p.add_argument("--blurs", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "toyworld_v2" / "eval")
    p.add_argument("--record", action="store_true")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    {"sweep": run_sweep, "scenes": run_scenes, "summary": run_summary,
     "figure": run_figure, "caption-use": run_caption_use}[args.mode](args)


if __name__ == "__main__":
    main()
