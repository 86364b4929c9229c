"""Layer resolution by structure, on the real SD-1.4 UNet config (meta device, no weights)."""

import json

import pytest
import torch

import emerdiff_lab as edl
from emerdiff_lab.layers import find_semantic_block, layer_downsample


def _unet_on_meta(config: dict):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        return UNet2DConditionModel.from_config(config)


@pytest.fixture(scope="module")
def sd14_unet_config(sd14_configs):
    return json.loads((sd14_configs / "unet" / "config.json").read_text())


@pytest.mark.parametrize("image_size", [512, 768])
def test_sd14_layers(sd14_unet_config, image_size):
    unet = _unet_on_meta(sd14_unet_config)
    feature, modulation = edl.resolve_layers(unet, image_size)
    assert feature == "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
    assert modulation == "up_blocks.1.attentions.2.transformer_blocks.0.attn2"
    block = find_semantic_block(unet)
    assert block.feature_size(image_size, 8) == image_size // 32  # 16x16 at 512, 24x24 at 768
    # the query of the feature layer is 1280 wide, as docs/method.md says for SD 1.x
    assert dict(unet.named_modules())[feature].to_q.out_features == 1280


def test_sd2_layers(sd14_unet_config):
    sd2 = dict(sd14_unet_config, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
               use_linear_projection=True, upcast_attention=True)
    unet = _unet_on_meta(sd2)
    assert edl.resolve_layers(unet, 768) == (
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2")
    assert layer_downsample(unet, "up_blocks.1.attentions.0.transformer_blocks.0.attn2") == 4


def test_fewer_cross_attentions_gives_the_last(sd14_unet_config):
    unet = _unet_on_meta(dict(sd14_unet_config, layers_per_block=1))  # up blocks have 2 layers
    assert edl.resolve_layers(unet, 512)[1] == "up_blocks.1.attentions.1.transformer_blocks.0.attn2"


def test_unet_without_cross_attention_up_block_is_refused(sd14_unet_config):
    config = dict(sd14_unet_config, up_block_types=["UpBlock2D"] * 4,
                  mid_block_type="UNetMidBlock2DCrossAttn")
    with pytest.raises(ValueError, match="no up block with cross-attention"):
        edl.resolve_layers(_unet_on_meta(config), 512)


@pytest.mark.parametrize("size", [500, 0, 96])
def test_image_size_must_be_a_multiple_of_64(sd14_unet_config, size):
    with pytest.raises(ValueError, match="multiple of 64"):
        edl.resolve_layers(_unet_on_meta(sd14_unet_config), size)


def test_tiny_model_keeps_sds_layout(tiny_model):
    assert edl.resolve_layers(tiny_model.unet, 256) == (
        "up_blocks.1.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.1.attentions.2.transformer_blocks.0.attn2")


def test_unknown_layer_name_is_refused(tiny_model, image128):
    cfg = tiny_model.default_config.replace(feature_layer="up_blocks.9.nothing")
    with pytest.raises(ValueError, match="feature_layer"):
        edl.extract_features(tiny_model, image128, cfg)
