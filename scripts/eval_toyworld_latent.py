#!/usr/bin/env python
"""Held-out evaluation of EmerDiff on ToyWorld-latent (VAE + latent UNet, 128 px scenes).

    # the model card's table (test scenes; --record writes the numbers the CI test re-checks)
    OMP_NUM_THREADS=2 nice -n 19 .venv/bin/python scripts/eval_toyworld_latent.py table --n 16 \
        --record --out runs/toyworld_latent/eval_table.json
    # settings search on validation scenes (never the test scenes); --record adds the choice
    .venv/bin/python scripts/eval_toyworld_latent.py sweep --n 4 --weights <file>
    # EmerDiff at each blur on the test scenes (reported, not chosen on); --record adds it
    .venv/bin/python scripts/eval_toyworld_latent.py blur --n 48 --record
    # figures/toyworld_latent_{samples,segmentation}.png
    .venv/bin/python scripts/eval_toyworld_latent.py figure

Scores are per-image Hungarian mIoU against the scenes' exact class maps and, under the same
matching, boundary F-scores (``<method>_bf1``, ``_bf2``: theta 1 and 2 px; ``_bf2_agnostic``:
all label changes at 2 px); mean ± standard error over scenes; differences between methods are
paired over the same scenes (mean ± s.e., and 95% t-intervals in ``paired_95``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from emerdiff_lab.io import atomic_file, write_text
from emerdiff_lab.stats import paired_difference
from emerdiff_lab.toyworld.evaluation_latent import (
    BASELINES,
    TEST_SEED_START,
    UNET_METHODS,
    VALIDATION_SEED_START,
    evaluate,
    paired,
    pixel_colour_kmeans,
    scenes,
)
from emerdiff_lab.toyworld.latent_model import IMAGE_SIZE, WEIGHTS_PATH, load_toyworld_latent

ROOT = Path(__file__).resolve().parents[1]
RECORDED_PATH = ROOT / "emerdiff_lab" / "toyworld" / "recorded_eval_latent.json"
LABELS = {"masks": "k-means masks (nearest)", "naive": "naive bilinear upsampling",
          "emerdiff": "EmerDiff", "emerdiff_norm": "EmerDiff, maps / own max",
          "pixel_kmeans": "k-means of pixel colours", "latent_kmeans": "k-means of VAE latents",
          "cell_colour_kmeans": "k-means of 16x16-cell mean colours"}


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@torch.no_grad()
def vae_psnr(model, n: int, start: int) -> dict:
    """PSNR (dB) of VAE reconstructions of ``n`` scenes (noisy input) against their noise-free
    renders: mean, standard error, n."""
    from emerdiff_lab.toyworld.scenes256 import generate_batch

    pixels, _ = scenes(n, start=start)
    clean, _ = generate_batch(range(start, start + n), IMAGE_SIZE, clean=True)
    clean = torch.from_numpy(clean).permute(0, 3, 1, 2).float() / 255
    values = []
    for i in range(n):
        rec = model.decode(model.encode(pixels[i:i + 1])).cpu()
        values.append(float(-10 * torch.log10(((rec - clean[i:i + 1]) ** 2).mean())))
    return {"mean": float(np.mean(values)), "sem": float(np.std(values, ddof=1) / np.sqrt(n)),
            "n": n, "per_image": values}


def old_scene_pixel_kmeans(n: int, k: int) -> dict:
    """k-means of pixel colours on the pixel-space ToyWorld's 64 px test scenes (same seeds, same
    K): what colour alone allowed on the old data."""
    from emerdiff_lab.evaluation.metrics import hungarian_miou
    from emerdiff_lab.toyworld.evaluation import heldout_scenes

    pixels, labels = heldout_scenes(n)
    values = [hungarian_miou(pixel_colour_kmeans(pixels[i], k), labels[i]).miou for i in range(n)]
    return {"mean": float(np.mean(values)), "sem": float(np.std(values, ddof=1) / np.sqrt(n)),
            "per_image": values}


def segment_seconds(model) -> dict:
    """Seconds of ``edl.segment`` on one test scene (IMAGE_SIZE px), default config (K=6): wall
    time, and CPU time of this process (on a shared machine the wall time includes waiting)."""
    import emerdiff_lab as edl

    pixels, _ = scenes(1, start=TEST_SEED_START)
    tick, cpu = time.time(), time.process_time()
    edl.segment(model, pixels[0], image_size=IMAGE_SIZE, progress=False)
    return {"wall": time.time() - tick, "cpu": time.process_time() - cpu,
            "threads": torch.get_num_threads()}


METRICS = (("", "mIoU"), ("_bf1", "BF 1 px"), ("_bf2", "BF 2 px"),
           ("_bf2_agnostic", "BF 2 px, all changes"))
# (name, method a, which a, method b, which b): differences paired over the same scenes.
PAIRS = (
    ("EmerDiff - naive (trained)", "emerdiff", "trained", "naive", "trained"),
    ("EmerDiff - naive (random control)", "emerdiff", "random", "naive", "random"),
    ("EmerDiff - k-means masks (trained)", "emerdiff", "trained", "masks", "trained"),
    ("EmerDiff - k-means of pixel colours", "emerdiff", "trained", "pixel_kmeans", "trained"),
    ("EmerDiff - k-means of cell colours", "emerdiff", "trained", "cell_colour_kmeans",
     "trained"),
    ("EmerDiff - k-means of VAE latents", "emerdiff", "trained", "latent_kmeans", "trained"),
    ("EmerDiff trained - EmerDiff random control", "emerdiff", "trained", "emerdiff", "random"),
    ("masks trained - masks random control", "masks", "trained", "masks", "random"),
    ("masks - k-means of cell colours (trained)", "masks", "trained", "cell_colour_kmeans",
     "trained"),
)


def paired_95(results: dict) -> dict:
    """{pair name: {metric suffix or "miou": PairedDifference fields}} for every pair of PAIRS
    and every metric the per-image scores hold (95% t-intervals, n scenes)."""
    out = {}
    for name, ma, wa, mb, wb in PAIRS:
        a, b = results[wa]["per_image"], results[wb]["per_image"]
        out[name] = {(suffix[1:] or "miou"): asdict(paired_difference(a[ma + suffix],
                                                                      b[mb + suffix]))
                     for suffix, _ in METRICS if ma + suffix in a and mb + suffix in b}
    return out


def boundary_markdown(record: dict) -> str:
    """The boundary F-score tables: each method's mean ± s.e. beside its mIoU, and the paired
    differences with 95% intervals."""
    trained, random = record["results"]["trained"], record["results"]["random"]
    n = trained["n"]
    head = " | ".join(title for _, title in METRICS)
    lines = [f"| {n} test scenes at {IMAGE_SIZE} px (mean ± s.e.) | {head} | random control: "
             f"mIoU | BF 2 px |", "|---" * (len(METRICS) + 3) + "|"]
    for m in UNET_METHODS + BASELINES:
        cells = [f"{trained['mean'][m + s]:.3f} ± {trained['sem'][m + s]:.3f}"
                 for s, _ in METRICS]
        control = [f"{random['mean'][m + s]:.3f} ± {random['sem'][m + s]:.3f}"
                   if m + s in random["mean"] else "(same)" for s in ("", "_bf2")]
        lines.append(f"| {LABELS[m]} | " + " | ".join(cells + control) + " |")
    lines += ["", f"| paired difference, 95% CI (n = {n}) | {head} |",
              "|---" * (len(METRICS) + 1) + "|"]
    for name, metrics in record["paired_95"].items():
        cells = [f"{d['mean']:+.3f} ({d['ci_low']:+.3f} to {d['ci_high']:+.3f})"
                 for d in (metrics.get(s[1:] or "miou") for s, _ in METRICS) if d]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(record: dict) -> str:
    trained, random = record["results"]["trained"], record["results"]["random"]
    n = trained["n"]
    lines = [f"| per-image Hungarian mIoU, {n} test scenes at {IMAGE_SIZE} px (mean ± s.e.) | "
             f"trained | random-weight UNet + trained VAE |", "|---|---|---|"]
    for m in UNET_METHODS:
        lines.append(f"| {LABELS[m]} | {trained['mean'][m]:.3f} ± {trained['sem'][m]:.3f} | "
                     f"{random['mean'][m]:.3f} ± {random['sem'][m]:.3f} |")
    for m in BASELINES:
        lines.append(f"| {LABELS[m]} (no UNet) | {trained['mean'][m]:.3f} ± "
                     f"{trained['sem'][m]:.3f} | (same) |")
    lines += ["", "| paired difference over the same scenes | mean ± s.e. |", "|---|---|"]
    for name, value in record["paired"].items():
        lines.append(f"| {name} | {value[0]:+.3f} ± {value[1]:.3f} |")
    return "\n".join(lines)


def table_part(args, which: str) -> dict:
    """One model's half of the table (``which``: "trained", with the baselines, the VAE's PSNR,
    the old scenes' colour k-means and segment's time; or "random", the control), under the
    trained model's default config. Two halves can run side by side and be merged."""
    trained = load_toyworld_latent(weights=args.weights)
    cfg = trained.default_config
    if which == "random":
        random = load_toyworld_latent(weights=args.weights, random_weights=True,
                                      seed=args.control_seed)
        return {"results": {"random": evaluate(random, args.n, cfg, baselines=False,
                                               progress=not args.quiet)}}
    return {"results": {"trained": evaluate(trained, args.n, cfg, progress=not args.quiet)},
            "vae_psnr_db": vae_psnr(trained, args.n, TEST_SEED_START),
            "old_scenes_pixel_kmeans": old_scene_pixel_kmeans(args.n, cfg.num_masks),
            "segment_seconds_k6": segment_seconds(trained)}


def run_table(args) -> None:
    """The table: both halves here (``--which both``), one half into ``--out`` (``--which
    trained`` or ``random``), or the halves of earlier runs merged (``--parts A B``)."""
    if args.parts:
        parts = [json.loads(Path(p).read_text()) for p in args.parts]
        if {part["weights_sha256"] for part in parts} != {sha256(args.weights)}:
            raise SystemExit("the parts were made with other weights than --weights")
    else:
        parts = [table_part(args, which) | {"weights_sha256": sha256(args.weights),
                                            "command": "python " + " ".join(sys.argv)}
                 for which in (("trained", "random") if args.which == "both" else (args.which,))]
    if len(parts) == 1 and not args.parts:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, json.dumps(parts[0], indent=1))
        print(f"wrote half of the table to {args.out}")
        return
    merged = {k: v for part in parts for k, v in part.items() if k != "results"}
    results = {k: v for part in parts for k, v in part["results"].items()}
    if set(results) != {"trained", "random"}:
        raise SystemExit(f"the parts hold {sorted(results)}, not trained and random")
    merged["command"] = " && ".join(dict.fromkeys(
        [part["command"] for part in parts] + ["python " + " ".join(sys.argv)]))
    t, r = results["trained"]["per_image"], results["random"]["per_image"]
    pairs = {
        "EmerDiff - naive (trained)": paired(t["emerdiff"], t["naive"]),
        "EmerDiff - naive (random control)": paired(r["emerdiff"], r["naive"]),
        "EmerDiff - k-means of pixel colours": paired(t["emerdiff"], t["pixel_kmeans"]),
        "EmerDiff - k-means of VAE latents": paired(t["emerdiff"], t["latent_kmeans"]),
        "EmerDiff trained - EmerDiff random control": paired(t["emerdiff"], r["emerdiff"]),
        "masks trained - masks random control": paired(t["masks"], r["masks"]),
        "masks - k-means of cell colours (trained)": paired(t["masks"],
                                                           t["cell_colour_kmeans"]),
    }
    record = {"command": merged["command"], "weights_sha256": merged["weights_sha256"],
              "control_seed": args.control_seed, "torch_threads": torch.get_num_threads(),
              "results": results, "paired": pairs, "paired_95": paired_95(results),
              **{k: merged[k] for k in ("vae_psnr_db", "old_scenes_pixel_kmeans",
                                        "segment_seconds_k6")}}
    record["markdown"] = markdown_table(record)
    record["markdown_boundary"] = boundary_markdown(record)
    print(record["markdown"] + "\n\n" + record["markdown_boundary"])
    print(f"VAE PSNR {record['vae_psnr_db']['mean']:.2f} ± {record['vae_psnr_db']['sem']:.2f} dB;"
          f" old 64 px scenes' pixel k-means {record['old_scenes_pixel_kmeans']['mean']:.3f}; "
          f"segment {record['segment_seconds_k6']}")
    if args.record and RECORDED_PATH.exists():  # the other modes' parts stay, for these weights
        old = json.loads(RECORDED_PATH.read_text())
        if old.get("weights_sha256") == record["weights_sha256"]:
            record |= {k: old[k] for k in ("blur_validation", "blur_test") if k in old}
    for path in ([args.out] if args.out else []) + ([RECORDED_PATH] if args.record else []):
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(record, indent=1))
        print(f"wrote {path}")


def _record_part(key: str, value: dict, weights: Path) -> None:
    """Adds ``value`` under ``key`` to recorded_eval_latent.json (made by ``table --record``
    for the same weights), leaving every other key as it was."""
    record = json.loads(RECORDED_PATH.read_text())
    if record["weights_sha256"] != sha256(weights):
        raise SystemExit(f"{RECORDED_PATH} is for other weights: run table --record first")
    write_text(RECORDED_PATH, json.dumps(record | {key: value}, indent=1))
    print(f"added {key} to {RECORDED_PATH}")


def _blur_configs(base, blurs, norms=(False,)) -> dict:
    return {f"blur={blur} norm={norm}": base.replace(blur_sigma=blur, normalize_maps=norm)
            for blur in blurs for norm in norms}


def _means(table: dict) -> dict:
    """{metric: {setting: mean over scenes}} of a config_score_table."""
    keys = next(iter(table.values())).keys()
    return {key: {name: float(np.mean(v[key])) for name, v in table.items()} for key in keys}


def run_blur(args) -> None:
    """Test scenes: EmerDiff's per-scene scores at each blur (``--blurs``), trained model and
    random control, the other settings the model's defaults. Reported beside the table; the
    blur is chosen on validation scenes (``sweep``), never here."""
    from emerdiff_lab.toyworld.evaluation import config_score_table

    report = {"n": args.n, "start": TEST_SEED_START, "blurs": args.blurs}
    pixels, labels = scenes(args.n, start=TEST_SEED_START)
    for which in ("trained", "random") if args.which == "both" else (args.which,):
        model = load_toyworld_latent(weights=args.weights, random_weights=which == "random",
                                     seed=args.control_seed)
        base = load_toyworld_latent(weights=args.weights).default_config
        table = config_score_table(model, pixels, labels, _blur_configs(base, args.blurs), base,
                                   progress=not args.quiet)
        report[which] = {"per_image": table, "mean": _means(table),
                         "config": base.to_dict()}
        for name, value in report[which]["mean"]["miou"].items():
            print(f"{which} {name}: mIoU {value:.3f}, BF 2 px "
                  f"{report[which]['mean']['bf2'][name]:.3f}", flush=True)
        if args.out:  # after each model, so a stopped run keeps the trained model's part
            args.out.parent.mkdir(parents=True, exist_ok=True)
            write_text(args.out, json.dumps(report, indent=1))
        if args.record:
            _record_part("blur_test", report, args.weights)


def run_sweep(args) -> None:
    """Validation scenes: EmerDiff over t_m x lambda x blur sigma x map normalisation, a loop
    over configs on one Session per scene (one inversion to the deepest t_m; blur and
    normalisation re-assemble the same raw maps), scored by mIoU and boundary F-scores; the
    setting SETTING_RULE picks; mask mIoU over the feature layers."""
    import emerdiff_lab as edl
    from emerdiff_lab.evaluation.metrics import hungarian_miou
    from emerdiff_lab.layers import find_semantic_block
    from emerdiff_lab.toyworld.evaluation import (
        SETTING_RULE,
        choose_setting,
        config_score_table,
        nearest_upsample,
    )

    model = load_toyworld_latent(weights=args.weights)
    pixels, labels = scenes(args.n, start=VALIDATION_SEED_START)
    base = model.default_config
    report = {"n": args.n, "start": VALIDATION_SEED_START, "masks": {}, "emerdiff": {}}
    for layer in ([] if args.skip_layers else
                  find_semantic_block(model.unet).cross_attention_layers):
        cfg = base.replace(feature_layer=layer)
        values = [hungarian_miou(nearest_upsample(edl.kmeans_masks(edl.extract_features(
            model, pixels[i], cfg), k=cfg.num_masks, seed=cfg.seed), IMAGE_SIZE), labels[i]).miou
            for i in range(args.n)]
        report["masks"][layer] = float(np.mean(values))
        print(f"masks {layer}: {np.mean(values):.3f}", flush=True)
    configs = {f"t_m={t_m} lambda={lam} {name}": setting.replace(
        modulation_timestep=t_m, modulation_strength=lam)
        for t_m in args.timesteps for lam in args.strengths
        for name, setting in _blur_configs(base, args.blurs, [bool(n) for n in args.norms]
                                           ).items()}
    table = config_score_table(model, pixels, labels, configs, base, progress=True)
    means = _means(table)
    report["emerdiff"] = means["miou"]          # the key earlier sweeps wrote: mean mIoU
    report["emerdiff_boundary"] = {k: v for k, v in means.items() if k != "miou"}
    report["rule"] = SETTING_RULE
    report["chosen"] = choose_setting(table, configs)
    report["best_by_miou"] = max(configs, key=means["miou"].get)
    report["per_image"] = table
    for key, value in sorted(means["miou"].items(), key=lambda kv: -kv[1]):
        print(f"mIoU {value:.3f}  BF 1 px {means['bf1'][key]:.3f}  BF 2 px "
              f"{means['bf2'][key]:.3f}  {key}")
    print(f"chosen ({SETTING_RULE}): {report['chosen']}; best by mIoU alone: "
          f"{report['best_by_miou']}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.out, json.dumps(report, indent=1))
    if args.record:
        _record_part("blur_validation", report, args.weights)


def run_figure(args) -> None:
    """figures/toyworld_latent_samples.png (scenes, VAE reconstructions, samples) and
    figures/toyworld_latent_segmentation.png (scene, labels, masks, naive, EmerDiff)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import emerdiff_lab as edl
    from emerdiff_lab.assembly import upsample_bilinear
    from emerdiff_lab.toyworld.sampling import sample

    model = load_toyworld_latent(weights=args.weights)
    pixels, labels = scenes(6, start=TEST_SEED_START)
    with torch.no_grad():
        recon = model.decode(model.encode(pixels)).cpu()
    drawn = sample(model, 6, seed=0, progress=False)
    fig, axes = plt.subplots(3, 6, figsize=(12, 6.4))
    for row, (title, images) in enumerate((("test scenes", pixels), ("VAE reconstructions",
                                                                     recon),
                                           ("samples (50-step DDPM)", drawn))):
        for col in range(6):
            axes[row, col].imshow(images[col].permute(1, 2, 0).numpy())
            axes[row, col].axis("off")
        axes[row, 0].set_title(title, loc="left", fontsize=10)
    fig.tight_layout()
    with atomic_file(ROOT / "figures" / "toyworld_latent_samples.png") as handle:
        fig.savefig(handle, format="png", dpi=80)
    plt.close(fig)

    fig, axes = plt.subplots(3, 5, figsize=(11, 6.8))
    for row in range(3):
        seg = edl.segment(model, pixels[row], image_size=IMAGE_SIZE, progress=False)
        panels = (pixels[row].permute(1, 2, 0).numpy(), labels[row].numpy(),
                  np.kron(seg.lowres_labels.numpy(), np.ones((IMAGE_SIZE // 16,) * 2, int)),
                  upsample_bilinear(seg.lowres_labels, IMAGE_SIZE).numpy(), seg.labels.numpy())
        for col, (panel, title) in enumerate(zip(panels, ("scene", "ground truth",
                                                          "k-means masks", "naive",
                                                          "EmerDiff"))):
            axes[row, col].imshow(panel, cmap=None if col == 0 else "tab10",
                                  interpolation="nearest")
            axes[row, col].axis("off")
            if row == 0:
                axes[row, col].set_title(title, fontsize=10)
    fig.tight_layout()
    with atomic_file(ROOT / "figures" / "toyworld_latent_segmentation.png") as handle:
        fig.savefig(handle, format="png", dpi=80)
    plt.close(fig)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("mode", choices=("table", "sweep", "blur", "figure"))
    p.add_argument("--n", type=int, default=16, help="number of scenes")
    p.add_argument("--weights", type=Path, default=WEIGHTS_PATH)
    p.add_argument("--control-seed", type=int, default=0)
    p.add_argument("--timesteps", type=int, nargs="+", default=[281, 481])
    p.add_argument("--strengths", type=float, nargs="+", default=[10.0, 30.0])
    p.add_argument("--blurs", type=float, nargs="+", default=[1.0, 2.0, 4.0, 8.0],
                   help="blur sigmas in px (sweep, blur)")
    p.add_argument("--norms", type=int, nargs="+", choices=(0, 1), default=[0, 1],
                   help="sweep: map normalisation off (0) and/or on (1)")
    p.add_argument("--which", choices=("trained", "random", "both"), default="both",
                   help="table, blur: the trained model, its random control, or both")
    p.add_argument("--parts", type=Path, nargs=2, default=None,
                   help="table: merge two halves written by --which trained / random --out")
    p.add_argument("--skip-layers", action="store_true",
                   help="sweep: skip the masks' mIoU per feature layer")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--record", action="store_true",
                   help="table: write emerdiff_lab/toyworld/recorded_eval_latent.json; "
                   "sweep, blur: add their part to it")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    if args.n < 2:
        p.error("--n must be at least 2 (a standard error needs two scenes)")
    if args.mode == "table" and args.which != "both" and not args.out:
        p.error("table --which trained/random writes its half to --out")
    torch.set_num_threads(args.threads)
    {"table": run_table, "sweep": run_sweep, "blur": run_blur,
     "figure": run_figure}[args.mode](args)


if __name__ == "__main__":
    main()
