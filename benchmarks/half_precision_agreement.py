"""Fraction of pixel labels on which a half-precision run agrees with float32, on a trained model.

    python benchmarks/half_precision_agreement.py --model toyworld --dtype bfloat16 --n 4 \
        --json benchmarks/results/agreement-toyworld-bf16-cpu.json

Random weights make argmax ties meaningless, so this is measured on ToyWorld (held-out scenes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

import emerdiff_lab as edl
from emerdiff_lab.toyworld import HELDOUT_SEED_START, generate_scene


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="toyworld")
    parser.add_argument("--dtype", default="bfloat16", choices=["float16", "bfloat16"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=4, help="held-out scenes")
    parser.add_argument("--json", type=Path, required=True)
    args = parser.parse_args(argv)

    full = edl.load_model(args.model, device=args.device, dtype="float32")
    half = edl.load_model(args.model, device=args.device, dtype=args.dtype)
    agreements = []
    for index in range(args.n):
        image, _ = generate_scene(HELDOUT_SEED_START + index, size=full.native_image_size)
        labels = [edl.segment(m, image, progress=False).labels for m in (full, half)]
        agreements.append(float((labels[0] == labels[1]).float().mean()))
        print(f"scene {index}: {agreements[-1]:.4f} of pixels agree")
    record = {"model": args.model, "device": args.device, "dtype": args.dtype,
              "scenes": args.n, "per_scene": agreements,
              "mean_agreement": sum(agreements) / len(agreements), "torch": torch.__version__,
              "command": " ".join(["half_precision_agreement.py", *(argv or sys.argv[1:])])}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
