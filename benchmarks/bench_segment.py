"""Times EmerDiff's naive path against the optimized one, in one run, and writes a JSON record.

    python benchmarks/bench_segment.py --model tiny --image-size 256 --num-masks 16 \
        --device cpu --json benchmarks/results/tiny-256-k16-cpu.json

naive: the whole 50-step inversion one UNet call per step, then one mask and one sign at a time
with its own reference pass for attention injection, float32 (``path="reference"``).
optimized: the inversion limited to t <= t_m in batched calls, then every mask and sign batched
behind one shared reference (``path="batched"``), in the requested dtype.

``sd14-random`` is the full-size SD 1.4 architecture built from its published configs with random
weights (cost does not depend on weight values); pass ``--configs`` to the folder holding them.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import torch

import emerdiff_lab as edl
from emerdiff_lab.io import write_text
from emerdiff_lab.models import EmerDiffModel, ddpm_scheduler_from_config, resolve_dtype

DEFAULT_CONFIGS = Path(__file__).resolve().parents[2] / "shared" / "data" / "sd-v1-4-configs"
# Dense half-precision peak of known accelerators, TFLOP/s, for the achieved fraction.
PEAK_TFLOPS = {"H100": 790.0, "H200": 790.0, "A100": 312.0}


def build_sd14_random(configs: Path, device: torch.device, dtype: torch.dtype) -> EmerDiffModel:
    """SD 1.4's UNet, VAE and text encoder from their configs, random weights (seeded)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    if not (configs / "unet" / "config.json").exists():
        raise FileNotFoundError(f"SD 1.4 configs not found in {configs}; pass --configs DIR "
                                f"(a folder with unet/, vae/, text_encoder/, tokenizer/, "
                                f"scheduler/)")
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(configs / "unet"))
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs / "vae"))
    text_encoder = CLIPTextModel(CLIPTextConfig.from_pretrained(configs / "text_encoder"))
    scheduler_config = json.loads((configs / "scheduler" / "scheduler_config.json").read_text())
    parts = [m.eval().requires_grad_(False).to(device, dtype) for m in (unet, vae, text_encoder)]
    return EmerDiffModel(
        unet=parts[0], vae=parts[1], text_encoder=parts[2],
        tokenizer=CLIPTokenizer.from_pretrained(configs / "tokenizer"),
        scheduler=ddpm_scheduler_from_config(scheduler_config), device=device, dtype=dtype,
        default_config=edl.EmerDiffConfig(), model_id="sd14-random", random_weights=True)


def load(name: str, device: str, dtype: str, configs: Path) -> EmerDiffModel:
    if name == "sd14-random":
        return build_sd14_random(configs, torch.device(device), resolve_dtype(dtype))
    return edl.load_model(name, device=device, dtype=dtype)


class UNetCallCounter:
    """Counts UNet forward calls and the batch elements they carried."""

    def __init__(self, unet: torch.nn.Module):
        self.calls = self.elements = 0
        self._handle = unet.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        self.calls += 1
        self.elements += sample.shape[0]

    def reset(self) -> dict:
        counts = {"unet_calls": self.calls, "unet_elements": self.elements}
        self.calls = self.elements = 0
        return counts


def run_naive(model, image, cfg):
    """Full sequential inversion, then the plain reference path."""
    inversion = edl.invert(model, image, cfg, full_trajectory=True, batch_size=1,
                           progress=False)
    features = edl.extract_features(model, image, cfg)
    lowres = edl.kmeans_masks(features, k=cfg.num_masks, seed=cfg.seed)
    maps = edl.pixel_change_maps(model, inversion, lowres, cfg, path="reference", progress=False)
    return edl.assemble(maps, cfg.blur_sigma)


def run_optimized(model, image, cfg):
    return edl.segment(model, image, cfg, image_size=image.shape[-1], original_size=False,
                       progress=False).model_labels


def timed(fn, model, *args) -> tuple[float, object]:
    _synchronize(model)
    start = time.perf_counter()
    result = fn(model, *args)
    _synchronize(model)
    return time.perf_counter() - start, result


def flops_of_one_image(model, image, cfg, counts: dict) -> float:
    """FLOPs of one image: one UNet element-call and one VAE decode counted with
    torch.utils.flop_counter, multiplied by the optimized path's element-calls and decodes."""
    from torch.utils.flop_counter import FlopCounterMode

    latent = model.encode(image[None])
    embeds = model.prompt_embeds(cfg.prompt)
    with FlopCounterMode(display=False) as unet_counter:
        model.unet(latent.to(model.dtype), torch.tensor([1], device=model.device),
                   encoder_hidden_states=embeds)
    with FlopCounterMode(display=False) as vae_counter:
        model.decode(latent)
    decodes = 2 * cfg.num_masks
    return (unet_counter.get_total_flops() * counts["unet_elements"]
            + vae_counter.get_total_flops() * decodes)


def peak_memory_gb(model) -> float:
    if model.device.type == "cuda":
        return torch.cuda.max_memory_allocated(model.device) / 2**30
    # ru_maxrss is in KiB on Linux: the process's peak resident memory
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _synchronize(model):
    synchronize_device(model.device)


def synchronize_device(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def add_workload_options(parser: argparse.ArgumentParser) -> None:
    """--model, --image-size, --num-masks, --device, --dtype, --configs: what is timed."""
    parser.add_argument("--model", default="tiny", help="tiny, sd14-random, or a load_model id")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--num-masks", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", help="dtype of the optimized path")
    parser.add_argument("--configs", type=Path, default=DEFAULT_CONFIGS,
                        help="folder of SD 1.4 configs for sd14-random")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_workload_options(parser)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="elements per UNet call of the optimized path (default: automatic)")
    parser.add_argument("--skip-naive", action="store_true", help="time the optimized path only")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the optimized model's UNet ResNet blocks and VAE "
                             "decoder (emerdiff_lab.compile_model); the first (compiling) run is "
                             "timed apart as first_run_s")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="device peak for the achieved fraction (default: the datasheet "
                             "of a known GPU, else a measured matrix product)")
    parser.add_argument("--json", type=Path, required=True, help="where to write the record")
    args = parser.parse_args(argv)

    image = edl.load_image(edl.sample_images()["chelsea"], size=args.image_size)
    record = {"model": args.model, "image_size": args.image_size, "num_masks": args.num_masks,
              "device": args.device, "dtype": args.dtype, "machine": _machine(args.device),
              "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])]),
              "torch": torch.__version__, "compiled": args.compile}

    if not args.skip_naive:
        naive_model = load(args.model, args.device, "float32", args.configs)
        cfg = naive_model.default_config.replace(num_masks=args.num_masks)
        counter = UNetCallCounter(naive_model.unet)
        record["naive_s"], naive_labels = timed(run_naive, naive_model, image, cfg)
        record["naive"] = counter.reset()
        del naive_model

    model = load(args.model, args.device, args.dtype, args.configs)
    cfg = model.default_config.replace(num_masks=args.num_masks, batch_size=args.batch_size)
    if args.compile:
        edl.compile_model(model)
        # Compilation happens at first use: a full-size warm-up run (same batch shapes) holds it.
        record["first_run_s"], _ = timed(run_optimized, model, image, cfg)
    elif model.device.type == "cuda":  # warm-up: kernel selection and allocator, not timed
        run_optimized(model, image, cfg.replace(num_masks=min(2, args.num_masks)))
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(model.device)
    counter = UNetCallCounter(model.unet)
    record["optimized_s"], labels = timed(run_optimized, model, image, cfg)
    record["optimized"] = counter.reset()
    record["peak_memory_gb"] = round(peak_memory_gb(model), 3)
    record["flops_per_image"] = flops_of_one_image(model, image, cfg, record["optimized"])
    achieved = record["flops_per_image"] / record["optimized_s"] / 1e12
    record["achieved_tflops"] = round(achieved, 3)
    peak, record["peak_source"] = _peak(args.peak_tflops, model.device, model.dtype)
    record["peak_tflops"] = round(peak, 3)
    record["fraction_of_peak"] = round(achieved / peak, 4)
    if "naive_s" in record:
        record["speedup"] = round(record["naive_s"] / record["optimized_s"], 2)
        if args.dtype == "float32":
            record["labels_equal_fraction"] = float((labels == naive_labels).float().mean())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    write_text(args.json, json.dumps(record, indent=2))
    print(json.dumps(record, indent=2))
    return 0


def _peak(given: float | None, device: torch.device, dtype: torch.dtype) -> tuple[float, str]:
    """The device's peak TFLOP/s and where it comes from: given, a known GPU's datasheet, or
    else measured as the best dense matrix product in ``dtype`` (the attainable peak)."""
    if given:
        return given, "given (--peak-tflops)"
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        name = torch.cuda.get_device_name(device)
        known = next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)
        if known:
            return known, f"datasheet, dense half precision ({name})"
    return matmul_tflops(device, dtype), f"measured: best {MATMUL_SIZE}^3 matmul in {dtype}"


MATMUL_SIZE = 2048


def matmul_tflops(device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """Best TFLOP/s of an n x n x n matrix product (n = MATMUL_SIZE) in ``dtype``."""
    a, b = (torch.randn(MATMUL_SIZE, MATMUL_SIZE, device=device, dtype=dtype) for _ in "ab")
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        synchronize_device(device)
        start = time.perf_counter()
        a @ b
        synchronize_device(device)
        best = min(best, time.perf_counter() - start)
    return 2 * MATMUL_SIZE**3 / best / 1e12


def _machine(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    import os

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"


if __name__ == "__main__":
    sys.exit(main())
