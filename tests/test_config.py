import pytest

import emerdiff_lab as edl


def test_defaults_are_the_papers_values():
    cfg = edl.EmerDiffConfig()
    assert cfg.feature_timestep == 1
    assert cfg.modulation_timestep == 281
    assert cfg.modulation_strength == 10
    assert cfg.num_inference_steps == 50
    assert cfg.attention_injection is True
    assert cfg.offset_placement == "after_projection"
    assert cfg.prompt == ""


@pytest.mark.parametrize("changes, word", [
    ({"num_masks": 0}, "num_masks"),
    ({"num_masks": 2.5}, "num_masks"),
    ({"batch_size": 1}, "batch_size"),
    ({"offset_placement": "inside"}, "offset_placement"),
    ({"feature_normalization": "zscore"}, "feature_normalization"),
    ({"blur_sigma": -1}, "blur_sigma"),
    ({"modulation_strength": "ten"}, "modulation_strength"),
    ({"feature_layer": ""}, "feature_layer"),
    ({"no_such_field": 1}, "no_such_field"),
])
def test_bad_values_name_the_field(changes, word):
    with pytest.raises(ValueError, match=word):
        edl.EmerDiffConfig().replace(**changes)


def test_round_trips_through_a_dict():
    cfg = edl.EmerDiffConfig(num_masks=12, modulation_layer="up_blocks.1.attentions.1."
                                                           "transformer_blocks.0.attn2")
    assert edl.EmerDiffConfig.from_dict(cfg.to_dict()) == cfg
