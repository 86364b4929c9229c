"""The EmerDiff attention processor computes what diffusers' own processor computes, also on
layers with query/key normalisation (PixArt-Sigma's and SD3's ``qk_norm``)."""

import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from emerdiff_lab.processors import (INJECT_FROM_FIRST, INJECT_NONE, AttentionControl,
                                     EmerDiffAttnProcessor)
from tolerances import LATENT_REL, assert_close


def _attention(qk_norm, cross: bool):
    torch.manual_seed(0)
    try:
        attn = Attention(query_dim=32, cross_attention_dim=24 if cross else None, heads=4,
                         kv_heads=4, dim_head=8, qk_norm=qk_norm).eval()
    except (TypeError, ValueError) as error:  # older diffusers lack some qk_norm kinds
        pytest.skip(f"this diffusers cannot build qk_norm={qk_norm!r}: {error}")
    for module in (attn.norm_q, attn.norm_k):  # non-trivial affine parameters
        for parameter in (module.parameters() if module is not None else []):
            parameter.data.uniform_(0.5, 1.5)
    return attn


def _reference_output(attn, hidden, context):
    """diffusers' computation, with an across-heads norm applied on (B, tokens, inner), where
    ``AttnProcessor2_0`` (which applies norms per head) cannot take it."""
    if attn.norm_q is not None and attn.norm_q.weight.shape[-1] == attn.inner_dim:
        query = attn.norm_q(attn.to_q(hidden))
        key = attn.norm_k(attn.to_k(hidden if context is None else context))
        value = attn.to_v(hidden if context is None else context)
        split = [x.unflatten(-1, (attn.heads, -1)).transpose(1, 2) for x in (query, key, value)]
        out = torch.nn.functional.scaled_dot_product_attention(*split, scale=attn.scale)
        return attn.to_out[0](out.transpose(1, 2).flatten(-2))
    attn.set_processor(AttnProcessor2_0())
    return attn(hidden, encoder_hidden_states=context)


@pytest.mark.parametrize("qk_norm", [None, "layer_norm", "rms_norm", "rms_norm_across_heads"])
@pytest.mark.parametrize("cross", [False, True])
@pytest.mark.parametrize("injection", [INJECT_NONE, INJECT_FROM_FIRST])
def test_processor_matches_diffusers(qk_norm, cross, injection):
    attn = _attention(qk_norm, cross)
    hidden = torch.randn(1, 16, 32)
    context = torch.randn(1, 5, 24) if cross else None
    with torch.no_grad():
        expected = _reference_output(attn, hidden, context)
        attn.set_processor(EmerDiffAttnProcessor("layer", AttentionControl(injection=injection)))
        got = attn(hidden, encoder_hidden_states=context)
    assert_close(got, expected, rel=LATENT_REL, what=f"qk_norm={qk_norm} output")


def test_dropping_the_norm_is_caught():
    """Without the norm the output moves far beyond the bound (the test can fail)."""
    attn = _attention("layer_norm", cross=False)
    hidden = torch.randn(1, 16, 32)
    with torch.no_grad():
        expected = _reference_output(attn, hidden, None)
        attn.norm_q = attn.norm_k = None
        attn.set_processor(EmerDiffAttnProcessor("layer", AttentionControl()))
        got = attn(hidden)
    with pytest.raises(AssertionError):
        assert_close(got, expected, rel=LATENT_REL, what="output without the norm")
