"""Fraction of pixel labels on which a half-precision run agrees with float32, on a trained model.

    python benchmarks/half_precision_agreement.py --model toyworld --dtype bfloat16 --n 4 \
        --json benchmarks/results/agreement-toyworld-bf16-cpu.json

Random weights make argmax ties meaningless, so this is measured on ToyWorld (held-out scenes).
Two numbers per scene:
- ``stage2``: both precisions modulate the same float32 k-means masks; the fraction of pixels
  whose argmax label is the same (the numerics of inversion, modulated denoising and decoding);
- ``end_to_end``: each precision runs ``segment`` from scratch (its own features and k-means);
  k-means numbers its clusters arbitrarily, so labels are compared after the best one-to-one
  matching of label ids (Hungarian).
And the quality of each precision's end-to-end segmentation: per-image Hungarian mIoU against
the scene's exact class map (``miou_float32``, ``miou_half``), so that a precision that labels
differently can be told apart from one that labels worse.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import emerdiff_lab as edl
from emerdiff_lab.evaluation.metrics import hungarian_miou
from emerdiff_lab.io import write_text
from emerdiff_lab.toyworld import HELDOUT_SEED_START, generate_scene


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toyworld", choices=["toyworld"],
                        help="a model trained on ToyWorld scenes (their exact labels score it)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=4, help="held-out scenes")
    parser.add_argument("--stage2-only", action="store_true",
                        help="skip the end-to-end half-precision run (a third of the work: CI)")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")

    full = edl.load_model(args.model, device=args.device, dtype="float32")
    half = edl.load_model(args.model, device=args.device, dtype=args.dtype)
    stage2, end_to_end, miou_full, miou_half = [], [], [], []
    for index in range(args.n):
        image, truth = generate_scene(HELDOUT_SEED_START + index, size=full.native_image_size)
        pixels = edl.load_image(image, size=full.native_image_size)
        # float32's own segmentation is also the stage-2 reference: its k-means masks are the
        # ones both precisions modulate, and its labels are what float32 makes of them.
        reference = edl.segment(full, pixels, progress=False)
        half_stage2 = _stage2_labels(half, pixels, reference.lowres_labels, full.default_config)
        stage2.append(float((reference.model_labels == half_stage2).float().mean()))
        miou_full.append(float(hungarian_miou(reference.labels.numpy(), truth).miou))
        if not args.stage2_only:
            half_labels = edl.segment(half, pixels, progress=False).labels
            matched = hungarian_miou(half_labels, reference.labels, ignore_index=None)
            end_to_end.append(matched.pixel_accuracy)
            miou_half.append(float(hungarian_miou(half_labels.numpy(), truth).miou))
        print(f"scene {index}: stage 2 {stage2[-1]:.4f}"
              + ("" if args.stage2_only else f", end to end {end_to_end[-1]:.4f}, mIoU float32 "
                 f"{miou_full[-1]:.3f}, {args.dtype} {miou_half[-1]:.3f}"))
        # Written after every scene, so that a stopped run keeps what it measured.
        record = {"model": args.model, "device": args.device, "dtype": args.dtype,
                  "scenes": len(stage2), "scenes_asked": args.n,
                  "stage2_per_scene": stage2, "end_to_end_per_scene": end_to_end,
                  "stage2_mean": sum(stage2) / len(stage2),
                  "stage2_min": min(stage2), "end_to_end_mean": _mean(end_to_end),
                  "end_to_end_min": min(end_to_end, default=None),
                  "miou_float32_per_scene": miou_full, "miou_half_per_scene": miou_half,
                  "miou_float32_mean": _mean(miou_full), "miou_half_mean": _mean(miou_half),
                  "miou_difference_sem": _sem([h - f for h, f in zip(miou_half, miou_full)]),
                  "torch": torch.__version__,
                  "command": " ".join(["half_precision_agreement.py", *(argv or sys.argv[1:])])}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_text(args.json, json.dumps(record, indent=2))
    print(args.json.read_text())
    return 0


def _mean(values: list[float]) -> float | None:
    """The mean, or None for no values (the end-to-end ones with --stage2-only)."""
    return sum(values) / len(values) if values else None


def _sem(values: list[float]) -> float | None:
    """Standard error of the mean (None for fewer than two values)."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5


def _stage2_labels(model, pixels, lowres, cfg):
    inversion = edl.invert(model, pixels, cfg, progress=False)
    maps = edl.pixel_change_maps(model, inversion, lowres, cfg, progress=False)
    return edl.assemble(maps, cfg.blur_sigma, cfg.normalize_maps)


if __name__ == "__main__":
    sys.exit(main())
