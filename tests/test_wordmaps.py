"""Word heat maps (DAAM) from cross-attention, on the random-weight tiny models: shapes,
normalisation, the word-to-token mapping, and the maps against a hand computation of one layer's
attention probabilities."""

import pytest
import torch
import torch.nn.functional as F

from emerdiff_lab.wordmaps import (cross_attention_layers, word_heat_maps,
                                   word_token_positions)
from tolerances import assert_close

# Maps after one UNet call in float32, relative to their maximum (1 after normalisation):
# the processor's softmax and a hand-written one differ by float rounding only.
MAP_REL = 1e-4


def test_maps_are_per_word_normalised_and_differ_between_words(tiny_model, image128):
    maps = word_heat_maps(tiny_model, image128, "a red house by the sea", ["house", "sea"],
                          timesteps=(101, 301))
    assert maps.words == ("house", "sea") and maps.maps.shape == (2, 128, 128)
    assert maps.maps.dtype == torch.float32
    assert torch.allclose(maps.maps.flatten(1).amax(1), torch.ones(2))
    assert maps.maps.min() >= 0
    assert (maps["house"] - maps["sea"]).abs().max() > 1e-3
    assert maps.layers == tuple(cross_attention_layers(tiny_model.unet))
    assert len(maps.layers) == 16   # SD 1.x's layout: 2 + 2 + 2 down, 1 mid, 3 x 3 up


def test_default_words_are_the_prompts_words(tiny_model, image128):
    maps = word_heat_maps(tiny_model, image128, "sky, tree", timesteps=(101,))
    assert maps.words == ("sky", "tree")


def test_word_positions_cover_every_occurrence_and_reject_absent_words(tiny_model):
    tokenizer = tiny_model.tokenizer   # byte-level: one token per byte, position 0 is the start
    assert word_token_positions(tokenizer, "ab cd ab", "ab") == [1, 2, 5, 6]
    with pytest.raises(ValueError, match="does not occur"):
        word_token_positions(tokenizer, "a house", "tree")
    with pytest.raises(ValueError, match="non-empty prompt"):
        word_heat_maps(tiny_model, torch.rand(3, 64, 64), "", ["x"])


def test_one_layer_matches_a_hand_computation(tiny_model, image128):
    """The map of one layer at one timestep equals softmax(q k^T / sqrt(d)) read from the layer's
    own inputs, summed over heads and the word's tokens, upsampled and divided by its max."""
    unet = tiny_model.unet
    layer = cross_attention_layers(unet)[-1]
    attn = unet.get_submodule(layer)
    seen = {}
    handle = attn.register_forward_hook(
        lambda module, args, kwargs, out: seen.update(hidden=args[0],
                                                      context=kwargs["encoder_hidden_states"]),
        with_kwargs=True)
    try:
        maps = word_heat_maps(tiny_model, image128, "a house by water", ["house"],
                              timesteps=(201,), layers=[layer])
    finally:
        handle.remove()
    q = attn.to_q(seen["hidden"]).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
    k = attn.to_k(seen["context"]).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
    probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)[0].sum(0)   # (queries, keys)
    positions = word_token_positions(tiny_model.tokenizer, "a house by water", "house")
    side = int(probs.shape[0] ** 0.5)
    expected = F.interpolate(probs[:, positions].sum(1).view(1, 1, side, side), size=(128, 128),
                             mode="bilinear", align_corners=False)[0, 0]
    assert_close(maps["house"], expected / expected.max(), rel=MAP_REL, scale=1.0,
                 what="word map")


def test_runs_on_other_architectures():
    """SDXL's two text encoders and PixArt's transformer with an attention mask."""
    import emerdiff_lab as edl

    for name in ("tiny-sdxl", "tiny-pixart"):
        model = edl.load_model(name, device="cpu")
        size = model.native_image_size
        maps = word_heat_maps(model, torch.rand(3, size, size), "a cat on a mat", ["cat", "mat"],
                              timesteps=(101,))
        assert maps.maps.shape == (2, size, size), name
        assert torch.isfinite(maps.maps).all(), name
