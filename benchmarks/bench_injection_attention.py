"""Injected attention: the reference's probabilities materialised once, or fused SDPA per element?

In the batched path every element's self-attention output is P_ref @ V_i, with P_ref the
unmodulated reference's attention probabilities. Two ways to compute it:

- materialised (what ``EmerDiffAttnProcessor`` does): P_ref = softmax(Q_ref K_ref^T) once for
  the reference, then one bmm of P_ref with every element's values stacked along the channels;
  attention FLOPs ~ (1 + B) / 2 of B plain attentions, plus P_ref's memory traffic (heads x
  tokens^2 values written and read once per layer and call);
- fused: scaled_dot_product_attention(Q_ref, K_ref, V_i) with the reference's queries and keys
  broadcast over the batch; P_ref is never stored, but Q_ref K_ref^T is recomputed for every
  element (attention FLOPs as B plain attentions).

Times both at SD 1.4's self-attention shapes (8 heads of 40 channels; tokens of the
highest-resolution layer) and prints a Markdown table. Folding the batch into SDPA's value
channels (V of shape (1, heads, keys, B * 40)) would avoid both costs, but no fused SDPA backend
accepts a value width different from the query's (PyTorch falls back to the math kernel, which
materialises P): that variant is not timed.

    python benchmarks/bench_injection_attention.py --device cpu --tokens 1024 4096 --batch 31
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

from emerdiff_lab.processors import _apply_probs_to_every_element


def materialised(attn: Attention, query, key, value):
    """query, key (1, tokens, inner) of the reference; value (B, tokens, inner)."""
    probs = attn.get_attention_scores(attn.head_to_batch_dim(query), attn.head_to_batch_dim(key))
    return _apply_probs_to_every_element(attn, probs, value)


def fused(attn: Attention, query, key, value):
    batch, tokens, inner = value.shape
    head_dim = inner // attn.heads

    def heads_first(x):
        return x.view(x.shape[0], tokens, attn.heads, head_dim).transpose(1, 2)

    out = F.scaled_dot_product_attention(heads_first(query).expand(batch, -1, -1, -1),
                                         heads_first(key).expand(batch, -1, -1, -1),
                                         heads_first(value), scale=attn.scale)
    return out.transpose(1, 2).reshape(batch, tokens, inner)


def time_ms(fn, *args, repeats: int, device: torch.device) -> float:
    fn(*args)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn(*args)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 1e3 * best


@torch.no_grad()
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--tokens", type=int, nargs="+", default=[1024, 4096],
                        help="query tokens of the layer: 1024 at 256 px, 4096 at 512 px")
    parser.add_argument("--batch", type=int, nargs="+", default=[31],
                        help="elements per call (the reference included)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats (best is kept)")
    args = parser.parse_args(argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)

    torch.manual_seed(0)
    attn = Attention(query_dim=320, heads=8, dim_head=40).to(device, dtype)
    print(f"device {args.device}, {args.dtype}, 8 heads x 40 channels, best of {args.repeats}\n")
    print("| tokens | elements | materialised ms | fused ms | fused / materialised "
          "| max abs diff |")
    print("|---|---|---|---|---|---|")
    for tokens in args.tokens:
        for batch in args.batch:
            query, key = (torch.randn(1, tokens, 320, device=device, dtype=dtype) for _ in "qk")
            value = torch.randn(batch, tokens, 320, device=device, dtype=dtype)
            slow = time_ms(materialised, attn, query, key, value, repeats=args.repeats,
                           device=device)
            fast = time_ms(fused, attn, query, key, value, repeats=args.repeats, device=device)
            diff = (materialised(attn, query, key, value)
                    - fused(attn, query, key, value)).abs().max().item()
            print(f"| {tokens} | {batch} | {slow:.1f} | {fast:.1f} | {fast / slow:.2f} "
                  f"| {diff:.1e} |")


if __name__ == "__main__":
    main()
