"""Loading: the tiny model, a user's pipeline (left as it was), a local diffusers folder (the same
code path as a hub id), clear errors when weights cannot be had, and SD 2.x-style variants."""

import json

import pytest
import torch

import emerdiff_lab as edl
from emerdiff_lab.tiny import SD_SCHEDULER_CONFIG, build_tiny_components


def _pipeline(tokenizer=None, text_encoder=None, scheduler_config=None):
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    parts = build_tiny_components(seed=1)
    return StableDiffusionPipeline(
        vae=parts["vae"], unet=parts["unet"],
        text_encoder=text_encoder or parts["text_encoder"],
        tokenizer=tokenizer or parts["tokenizer"],
        scheduler=PNDMScheduler.from_config(scheduler_config or SD_SCHEDULER_CONFIG),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def test_tiny_model_parts(tiny_model):
    from diffusers import DDIMScheduler

    assert tiny_model.random_weights and tiny_model.model_id == "tiny"
    assert isinstance(tiny_model.scheduler, DDIMScheduler)
    assert tiny_model.vae is not None and tiny_model.vae_scale_factor == 8
    assert tiny_model.device == torch.device("cpu") and tiny_model.dtype == torch.float32
    assert tiny_model.prompt_embeds("").shape == (1, 77, 32)
    ids = tiny_model.tokenizer("a cat").input_ids
    assert ids[0] == tiny_model.tokenizer.bos_token_id and ids[-1] == \
        tiny_model.tokenizer.eos_token_id and len(ids) == 2 + len("acat")


def test_tiny_weights_are_seeded():
    first, second = edl.load_model("tiny"), edl.load_model("tiny")
    for a, b in zip(first.unet.parameters(), second.unet.parameters()):
        assert torch.equal(a, b)
    other = edl.load_model("tiny", seed=1)
    assert not torch.equal(next(other.unet.parameters()), next(first.unet.parameters()))


def test_from_pipeline_leaves_the_pipeline_as_it_was(image128):
    pipe = _pipeline()
    pipe.enable_attention_slicing()
    processors = dict(pipe.unet.attn_processors)
    scheduler = pipe.scheduler
    model = edl.from_pipeline(pipe, model_id="my-pipe")
    seg = edl.segment(model, image128, model.default_config.replace(num_masks=3),
                      image_size=128, progress=False)
    assert seg.labels.shape == (128, 128) and seg.provenance["model_id"] == "my-pipe"
    assert pipe.scheduler is scheduler and type(scheduler).__name__ == "PNDMScheduler"
    after = pipe.unet.attn_processors
    assert all(after[k] is processors[k] for k in processors)
    assert type(next(iter(after.values()))).__name__ == "SlicedAttnProcessor"


def test_local_folder_loads_through_the_real_loading_code(tmp_path, image128, sd14_configs):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # SD 1.4's real tokenizer and PNDM scheduler config; small networks with random weights.
    tokenizer = CLIPTokenizer.from_pretrained(sd14_configs / "tokenizer")
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=77))
    scheduler_config = json.loads((sd14_configs / "scheduler" / "scheduler_config.json")
                                  .read_text())
    _pipeline(tokenizer, text_encoder, scheduler_config).save_pretrained(tmp_path / "sd")
    model = edl.load_model(str(tmp_path / "sd"), device="cpu", local_files_only=True)
    assert model.model_id == str(tmp_path / "sd") and not model.random_weights
    assert model.tokenizer("").input_ids == [49406, 49407]
    timesteps = edl.inversion.schedule(model, 50).tolist()
    assert timesteps[:2] == [981, 961] and len(set(timesteps)) == 50
    seg = edl.segment(model, image128, model.default_config.replace(num_masks=3),
                      image_size=128, progress=False)
    assert seg.labels.shape == (128, 128)


def test_unloadable_model_names_the_model_and_points_to_tiny(tmp_path):
    with pytest.raises(OSError, match=r"'no-such-org/no-such-model'.*load_model\('tiny'\)"):
        edl.load_model("no-such-org/no-such-model", device="cpu", local_files_only=True)
    with pytest.raises(OSError, match="load_model"):
        edl.load_model(str(tmp_path / "missing-folder"), device="cpu")


@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": "float8"}, "dtype"),
    ({"device": "gpu-please"}, "device"),
])
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        edl.load_model("tiny", **kwargs)


def test_sd2_style_unet_with_upcast_attention_runs_in_half_precision(image128):
    """SD 2.x: linear projections, 1024-style head layout, upcast_attention; bfloat16 on CPU."""
    from diffusers import UNet2DConditionModel

    tiny = edl.load_model("tiny")
    config = dict(tiny.unet.config, use_linear_projection=True, upcast_attention=True,
                  attention_head_dim=[1, 2, 2, 2])
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config).eval()
    model = edl.models.EmerDiffModel(**{**tiny.__dict__, "unet": unet, "_prompt_cache": {}})
    cfg = model.default_config.replace(num_masks=2)
    maps32 = edl.pixel_change_maps(model, edl.invert(model, image128, cfg, progress=False),
                                   torch.arange(16).view(4, 4) % 2, cfg, progress=False)
    assert torch.isfinite(maps32).all() and maps32.max() > 0

    half = edl.models.EmerDiffModel(**{**model.__dict__, "_prompt_cache": {},
                                       "unet": unet.to(torch.bfloat16),
                                       "vae": tiny.vae.to(torch.bfloat16),
                                       "text_encoder": tiny.text_encoder.to(torch.bfloat16),
                                       "dtype": torch.bfloat16})
    inv = edl.invert(half, image128, cfg, progress=False)
    maps16 = edl.pixel_change_maps(half, inv, torch.arange(16).view(4, 4) % 2, cfg,
                                   progress=False)
    assert maps16.dtype == torch.float32 and torch.isfinite(maps16).all()
