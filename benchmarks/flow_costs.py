"""EmerDiff's cost on paper: FLOPs per image and memory per step for SD 1.4, SD3.5-medium and
FLUX.1-dev, counted on the meta device (no weights, nothing run on real numbers).

    python benchmarks/flow_costs.py [--configs ../shared/data] [--sizes 512 1024] [--masks 30]

FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` over one denoiser forward of one batch
element on meta tensors (matrix products and attention; 2 FLOPs per multiply-add; norms,
activations and element-wise work are not counted), and one VAE encode and decode. Per image:

    denoiser forwards = 1 (features at t_f) + S (inversion, t <= t_m) + S * (2K + 1)
                        (modulated denoising: reference + K masks x 2 signs per step)
    VAE = 1 encode + 2K decodes

with S the steps the t_m mapping leaves (SD 1.4: 15 of 50; SD3.5-medium: 11; FLUX.1-dev: 15
at 512 px, 10 at 1024 px). Text encoders run once per prompt and are left out.

Memory (GiB, bfloat16 = 2 bytes), an analytic estimate, not measured:

    weights     = transformer parameters x 2 (text encoders released after the prompt is
                  encoded, or offloaded; VAE 0.16 GiB added)
    activations = B x N x 15 x inner x 2: a block's live tensors at its peak (residual, norm,
                  q/k/v and their normed/rotated copies, attention output, MLP branch) are
                  about 15 hidden-widths per token; B = 61 batch elements (2K + 1) or a chunk
    injection   = heads x N^2 x 4 x 2 (element 0's float32 scores and probabilities of one
                  layer) + B x N x inner x 2 (the values regrouped for P V)
    recorded    = sum over attention layers of heads x N_q x N_k x 2 per step (the reference
                  path holds one step's, record_reference all S steps')

N = image tokens, plus text tokens where text joins the attention (SD3: 333, FLUX: 512).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def _meta(cls, path: Path):
    with torch.device("meta"):
        return cls.from_config(json.loads(path.read_text()))


def _flops(fn) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        fn()
    return counter.get_total_flops()


def denoiser_flops(name: str, model, side: int) -> int:
    """FLOPs of one forward of one element on a side x side latent."""
    meta = {"device": "meta"}
    if name == "sd14":
        return _flops(lambda: model(torch.empty(1, 4, side, side, **meta),
                                    torch.full((1,), 500, **meta),
                                    torch.empty(1, 77, 768, **meta)))
    if name == "sd35-medium":
        return _flops(lambda: model(torch.empty(1, 16, side, side, **meta),
                                    encoder_hidden_states=torch.empty(1, 333, 4096, **meta),
                                    pooled_projections=torch.empty(1, 2048, **meta),
                                    timestep=torch.empty(1, **meta)))
    tokens = (side // 2) ** 2
    return _flops(lambda: model(torch.empty(1, tokens, 64, **meta),
                                encoder_hidden_states=torch.empty(1, 512, 4096, **meta),
                                pooled_projections=torch.empty(1, 768, **meta),
                                timestep=torch.empty(1, **meta), guidance=torch.empty(1, **meta),
                                img_ids=torch.zeros(tokens, 3, **meta),
                                txt_ids=torch.zeros(512, 3, **meta)))


def vae_flops(vae, image_size: int) -> tuple[int, int]:
    side = image_size // 8
    channels = vae.config.latent_channels
    encode = _flops(lambda: vae.encode(torch.empty(1, 3, image_size, image_size, device="meta")))
    decode = _flops(lambda: vae.decode(torch.empty(1, channels, side, side, device="meta")))
    return encode, decode


def recorded_bytes(name: str, model, side: int) -> tuple[int, int]:
    """(recorded probabilities per step for every attention layer, one layer's float32
    probabilities of element 0) in bytes."""
    per_step, largest = 0, 0
    if name == "sd14":
        from emerdiff_lab.layers import layer_downsample

        for key in model.attn_processors:
            layer = key.removesuffix(".processor")
            attn = model.get_submodule(layer)
            queries = (side // layer_downsample(model, layer)) ** 2
            keys = 77 if attn.is_cross_attention else queries
            per_step += attn.heads * queries * keys * 2
            largest = max(largest, attn.heads * queries * keys * 4)
        return per_step, largest
    heads = model.config.num_attention_heads
    if name == "sd35-medium":
        image, text = (side // 2) ** 2, 333
        joint = len(model.transformer_blocks)
        dual = sum(block.attn2 is not None for block in model.transformer_blocks)
        per_step = (joint * heads * (image + text) ** 2 + dual * heads * image ** 2) * 2
        return per_step, heads * (image + text) ** 2 * 4
    tokens = (side // 2) ** 2 + 512
    layers = len(model.transformer_blocks) + len(model.single_transformer_blocks)
    return layers * heads * tokens ** 2 * 2, heads * tokens ** 2 * 4


def memory_gib(name: str, model, side: int, batch: int) -> dict:
    """The analytic memory estimate of the module docstring, in GiB."""
    config = model.config
    inner = config.num_attention_heads * config.attention_head_dim
    text = {"sd35-medium": 333, "flux1-dev": 512}[name]
    tokens = (side // 2) ** 2 + text
    recorded, _ = recorded_bytes(name, model, side)
    weights = sum(p.numel() for p in model.parameters()) * 2 + 0.16 * 2 ** 30
    activations = batch * tokens * 15 * inner * 2
    injection = config.num_attention_heads * tokens ** 2 * 8 + batch * tokens * inner * 2
    return {key: value / 2 ** 30 for key, value in (
        ("weights", weights), ("activations", activations), ("injection", injection),
        ("recorded", recorded))}


STEPS = {("sd14", 512): 15, ("sd14", 1024): 15, ("sd35-medium", 512): 11,
         ("sd35-medium", 1024): 11, ("flux1-dev", 512): 15, ("flux1-dev", 1024): 10}


def main() -> None:
    from diffusers import (AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel,
                           UNet2DConditionModel)

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=Path,
                        default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--masks", type=int, default=30)
    parser.add_argument("--chunk", type=int, default=8, help="a smaller batch per call")
    parser.add_argument("--skip-flops", action="store_true", help="the memory table only")
    args = parser.parse_args()
    flow = args.configs / "flow-transformer-configs"
    sd14 = args.configs / "sd-v1-4-configs"
    models = {"sd14": (_meta(UNet2DConditionModel, sd14 / "unet" / "config.json"),
                       _meta(AutoencoderKL, sd14 / "vae" / "config.json")),
              "sd35-medium": (_meta(SD3Transformer2DModel, flow / "sd35-medium_transformer.json"),
                              _meta(AutoencoderKL, flow / "sd3_vae.json")),
              "flux1-dev": (_meta(FluxTransformer2DModel, flow / "flux1-dev_transformer.json"),
                            _meta(AutoencoderKL, flow / "flux1_vae.json"))}
    k = args.masks
    print("| model | px | weights | batched, B = 2K+1: no injection | with injection | "
          f"chunked, B = {args.chunk}: no injection | with injection | recorded per step | "
          "reference path (B = 1, one step recorded) | record_reference + replay (B = 2, all "
          "S steps) |")
    print("|" + "---|" * 10)
    for name in ("sd35-medium", "flux1-dev"):
        for size in args.sizes:
            row = [memory_gib(name, models[name][0], size // 8, b)
                   for b in (2 * k + 1, args.chunk, 1, 2)]
            base = [m["weights"] + m["activations"] for m in row]
            recorded, steps = row[0]["recorded"], STEPS[(name, size)]
            print(f"| {name} | {size} | {row[0]['weights']:.1f} | {base[0]:.1f} | "
                  f"{base[0] + row[0]['injection']:.1f} | {base[1]:.1f} | "
                  f"{base[1] + row[1]['injection']:.1f} | {recorded:.1f} | "
                  f"{base[2] + recorded:.1f} | {base[3] + steps * recorded:.0f} |")
    if args.skip_flops:
        return
    print()
    print("| model | px | params (B) | weights bf16 GiB | S | denoiser TFLOP/forward | "
          "forwards | denoiser TFLOP/image | VAE TFLOP/image | total TFLOP/image | "
          "recorded GiB/step | one layer's P (fp32) GiB |")
    print("|" + "---|" * 12)
    for name, (denoiser, vae) in models.items():
        params = sum(p.numel() for p in denoiser.parameters())
        for size in args.sizes:
            steps = STEPS[(name, size)]
            forward = denoiser_flops(name, denoiser, size // 8)
            forwards = 1 + steps + steps * (2 * k + 1)
            encode, decode = vae_flops(vae, size)
            vae_total = encode + 2 * k * decode
            recorded, layer = recorded_bytes(name, denoiser, size // 8)
            print(f"| {name} | {size} | {params / 1e9:.2f} | {params * 2 / 2**30:.1f} | {steps} "
                  f"| {forward / 1e12:.3f} | {forwards} | {forward * forwards / 1e12:.0f} | "
                  f"{vae_total / 1e12:.0f} | {(forward * forwards + vae_total) / 1e12:.0f} | "
                  f"{recorded / 2**30:.2f} | {layer / 2**30:.2f} |")


if __name__ == "__main__":
    main()
