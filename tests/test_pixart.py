"""PixArt-α / PixArt-Σ on the tiny random-weight PixArt ("tiny-pixart"): the engine's
invariants (exact inversion, lambda = 0, batched = reference, segment, processors restored),
PixArt's inputs (T5 embeddings with their attention mask, the size conditions, the timestep as
a keyword, learned variance dropped), the patch-grid layers, the schedule (leading spacing,
timesteps mapped by noise level), why the offset goes before the output projection, and loading
(pipeline, folder round trip)."""

import json

import pytest
import torch

import emerdiff_lab as edl
from emerdiff_lab.architectures import PixArt
from emerdiff_lab.layers import PatchGeometry, find_semantic_block
from emerdiff_lab.processors import AttentionControl, installed_processors
from emerdiff_lab.schedule import equivalent_timestep, sd_alpha_bar
from emerdiff_lab.tiny_pixart import tiny_pixart_pipeline
from tolerances import LATENT_REL, assert_close, assert_decoded_close


@pytest.fixture(scope="module")
def pixart():
    return edl.load_model("tiny-pixart", device="cpu")


@pytest.fixture(scope="module")
def fast_cfg(pixart):
    """A 10-step schedule (t_m = 201: 3 modulated steps), two masks."""
    return pixart.default_config.replace(num_inference_steps=10, modulation_timestep=201,
                                         num_masks=2)


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def inversion(pixart, fast_cfg, image):
    return edl.invert(pixart, image, fast_cfg, progress=False)


@pytest.fixture(scope="module")
def halves():
    labels = torch.zeros(4, 4, dtype=torch.int64)  # the 4x4 patch grid at 64 px
    labels[:, 2:] = 1
    return labels


# -- PixArt's inputs

def test_tiny_pixart_parts(pixart):
    assert isinstance(pixart.architecture, PixArt) and pixart.architecture.name == "pixart-alpha"
    assert pixart.random_weights and pixart.native_image_size == 64
    assert pixart.vae_scale_factor == 8 and "tiny-pixart" in edl.models.named_models()
    condition = pixart.condition("a cat")
    assert condition.embeds.shape == (1, 120, 32)  # α's 120 T5 tokens
    tokens = pixart.tokenizer("a cat", padding="max_length", max_length=120,
                              return_tensors="pt")
    mask = condition.added["encoder_attention_mask"]
    assert torch.equal(mask, tokens.attention_mask) and int(mask.sum()) > 1
    expected = pixart.text_encoder(tokens.input_ids, attention_mask=tokens.attention_mask)[0]
    assert torch.equal(condition.embeds, expected)
    # the empty prompt is T5's encoding of "": one real token (end of sequence)
    assert int(pixart.condition("").added["encoder_attention_mask"].sum()) == 1


def test_every_call_gets_the_mask_and_size_conditions(pixart, image, fast_cfg):
    seen = []

    def record(module, args, kwargs):
        seen.append((args, kwargs))

    handle = pixart.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        inv = edl.invert(pixart, image, fast_cfg, batch_size=2, progress=False)
        edl.perturb(pixart, inv, torch.eye(4, dtype=torch.bool), fast_cfg)
    finally:
        handle.remove()
    assert seen
    for args, kwargs in seen:
        batch = args[0].shape[0]
        assert len(args) == 1 and kwargs["timestep"].shape == (batch,)  # a keyword, per element
        assert kwargs["encoder_attention_mask"].shape == (batch, 120)
        added = kwargs["added_cond_kwargs"]
        assert added["resolution"].tolist() == [[64.0, 64.0]] * batch
        assert added["aspect_ratio"].tolist() == [[1.0]] * batch


def test_learned_variance_is_dropped(pixart):
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    condition = pixart.condition("")
    prediction = edl.inversion.unet_predict(pixart, latents, torch.tensor([501]), condition)
    raw = pixart.unet(latents, timestep=torch.tensor([501, 501]),
                      **pixart.architecture.unet_inputs(pixart, condition, latents)).sample
    assert raw.shape[1] == 8 and prediction.shape == latents.shape
    assert torch.equal(prediction, raw[:, :4])


def test_bare_embeddings_without_the_mask_are_refused(pixart):
    latents = torch.zeros(1, 4, 8, 8)
    with pytest.raises(ValueError, match="attention mask"):
        edl.inversion.unet_predict(pixart, latents, torch.tensor([1]), torch.zeros(1, 120, 32))
    out = edl.inversion.unet_predict(pixart, latents, torch.tensor([1]), pixart.prompt_embeds(""))
    assert out.shape == latents.shape


def test_size_conditions_only_where_the_transformer_takes_them(pixart):
    model = edl.models.EmerDiffModel(**{**pixart.__dict__, "_prompt_cache": {}})
    model.unet = tiny_pixart_pipeline().transformer
    model.unet.use_additional_conditions = False  # as Σ and the 512 px α model
    added = model.architecture.unet_inputs(model, model.condition(""),
                                           torch.zeros(3, 4, 8, 8))["added_cond_kwargs"]
    assert added == {"resolution": None, "aspect_ratio": None}


# -- layers on the patch grid

def test_layers_are_the_middle_blocks_cross_attention_on_the_patch_grid(pixart, image, fast_cfg):
    assert pixart.architecture.default_layers(pixart, 64) == ("transformer_blocks.2.attn2",) * 2
    assert edl.resolve_layers(pixart.unet, 64) == ("transformer_blocks.2.attn2",) * 2
    block = find_semantic_block(pixart.unet)  # what the explorer's layer menu lists
    assert block.block_name == "transformer_blocks"
    assert block.cross_attention_layers == tuple(f"transformer_blocks.{i}.attn2"
                                                 for i in range(4))
    assert block.feature_size(64, 8) == 4 and block.feature_size(512, 8) == 32
    assert isinstance(pixart.architecture.geometry(pixart), PatchGeometry)
    assert edl.extract_features(pixart, image, fast_cfg).shape == (4, 4, 24)
    other = fast_cfg.replace(feature_layer="transformer_blocks.0.attn2")
    big = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(1))
    assert edl.extract_features(pixart, big, other).shape == (8, 8, 24)  # off native size
    with pytest.raises(ValueError, match="not a cross-attention layer"):
        edl.extract_features(pixart, image, fast_cfg.replace(
            feature_layer="transformer_blocks.0.attn1"))
    with pytest.raises(ValueError, match="multiple of 16"):
        edl.extract_features(pixart, torch.rand(3, 72, 72), fast_cfg)


def test_injection_covers_every_blocks_self_and_cross_attention(pixart):
    names = [key.removesuffix(".processor") for key in pixart.unet.attn_processors]
    assert sorted(names) == sorted(f"transformer_blocks.{i}.attn{j}"
                                   for i in range(4) for j in (1, 2))


def test_reference_pass_size_comes_from_the_patch_grid(pixart, inversion, fast_cfg):
    # 4 blocks x 2 heads x 16 queries x (16 self + 120 text keys), 3 steps, float32
    expected = 4 * 2 * 16 * (16 + 120) * 3 * 4
    assert edl.modulation.reference_pass_nbytes(pixart, inversion, fast_cfg) == expected


# -- schedule

def test_schedule_is_leading_on_linear_betas_and_timesteps_keep_their_noise_level(pixart):
    assert pixart.scheduler.config.beta_schedule == "linear"
    timesteps = edl.inversion.schedule(pixart, 50).tolist()
    assert timesteps[:2] == [981, 961] and timesteps[-1] == 1
    assert edl.inversion.posterior_std(pixart, 1, 50) > 1e-3  # the last step keeps a variance
    cfg = pixart.default_config
    assert cfg.modulation_timestep == equivalent_timestep(pixart.scheduler, 281, 50) != 281
    assert cfg.feature_timestep == equivalent_timestep(pixart.scheduler, 1)
    alpha = pixart.scheduler.alphas_cumprod
    mapped = cfg.modulation_timestep
    assert abs(float(alpha[mapped]) - sd_alpha_bar(281)) < abs(
        float(alpha[mapped + 20]) - sd_alpha_bar(281))
    assert cfg.offset_placement == "before_projection"


# -- the engine's invariants on tiny-pixart

def test_inversion_is_exact(pixart, image):
    inv = edl.invert(pixart, image, pixart.default_config, full_trajectory=True, progress=False)
    assert inv.latents.shape == (51, 4, 8, 8)
    assert_close(edl.reconstruct(pixart, inv), inv.latents, rel=LATENT_REL,
                 what="PixArt latents")


def test_zero_strength_gives_zero_maps(pixart, fast_cfg, inversion, halves):
    maps = edl.pixel_change_maps(pixart, inversion, halves,
                                 fast_cfg.replace(modulation_strength=0.0), progress=False)
    assert maps.shape == (2, 64, 64)
    assert_decoded_close(maps, torch.zeros_like(maps), what="PixArt lambda = 0 maps")


def test_an_offset_after_the_projection_is_invisible_so_it_goes_before(pixart, fast_cfg,
                                                                       inversion, halves):
    """Every block reads the residual stream through a LayerNorm, which removes a per-token
    constant, and the empty prompt's single unmasked key makes the cross-attention ignore its
    queries: an offset added uniformly over channels after ``to_out`` changes nothing."""
    after = edl.pixel_change_maps(pixart, inversion, halves,
                                  fast_cfg.replace(offset_placement="after_projection"),
                                  progress=False)
    before = edl.pixel_change_maps(pixart, inversion, halves, fast_cfg, progress=False)
    assert_decoded_close(after, torch.zeros_like(after), what="after-projection maps")
    assert before.abs().max() > 0.1


def test_batched_path_equals_reference_path(pixart, fast_cfg, inversion, halves):
    batched = edl.pixel_change_maps(pixart, inversion, halves, fast_cfg, progress=False)
    plain = edl.pixel_change_maps(pixart, inversion, halves, fast_cfg, path="reference",
                                  progress=False)
    assert batched.abs().max() > 1e-3
    assert_decoded_close(batched, plain, what="PixArt batched and reference-path maps")


def test_replayed_reference_equals_batched_perturbation(pixart, fast_cfg, inversion):
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[1:3, 1:3] = True
    reference = edl.record_reference(pixart, inversion, fast_cfg)
    replayed = edl.perturb(pixart, inversion, region, fast_cfg, reference=reference)
    batched = edl.perturb(pixart, inversion, region, fast_cfg)
    assert_decoded_close(replayed.diff, batched.diff, what="replayed and batched diff")


def test_segment_end_to_end_and_processors_restored(pixart, fast_cfg, image):
    before = dict(pixart.unet.attn_processors)
    seg = edl.segment(pixart, image, fast_cfg, progress=False)
    assert seg.labels.shape == (64, 64) and seg.lowres_labels.shape == (4, 4)
    assert seg.diff_maps.shape == (seg.num_masks, 64, 64)
    assert 0 <= int(seg.labels.min()) and int(seg.labels.max()) < seg.num_masks
    assert seg.provenance["model_id"] == "tiny-pixart" and seg.random_weights
    after = pixart.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    with pytest.raises(RuntimeError, match="boom"):
        with installed_processors(pixart.unet, None, AttentionControl()):
            raise RuntimeError("boom")
    assert all(pixart.unet.attn_processors[k] is before[k] for k in before)


def test_vae_runs_in_float32_where_float16_would_overflow(pixart, image):
    half = edl.models.EmerDiffModel(**{**pixart.__dict__, "_prompt_cache": {}, "_derived": {},
                                       "vae": tiny_pixart_pipeline().vae.half(),
                                       "dtype": torch.float16})
    assert half.vae.config.force_upcast  # diffusers' default, and SDXL's VAE (PixArt-Σ) sets it
    assert half.architecture.vae_dtype(half) == torch.float32
    latents = half.encode(image[None])
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()
    assert half.decode(latents).shape == (1, 3, 64, 64)
    assert next(half.vae.parameters()).dtype == torch.float16  # the user's VAE is not cast
    assert pixart.architecture.vae_dtype(pixart) == torch.float32


# -- loading

def test_from_pipeline_leaves_the_pipeline_as_it_was(pixart, image, fast_cfg):
    pipe = tiny_pixart_pipeline()
    processors, scheduler = dict(pipe.transformer.attn_processors), pipe.scheduler
    model = edl.from_pipeline(pipe, model_id="my-pixart")
    assert isinstance(model.architecture, PixArt) and model.architecture.variant == "alpha"
    assert model.unet is pipe.transformer and model.dtype == torch.float32
    assert model.default_config == pixart.default_config.replace(num_masks=30)
    maps = edl.pixel_change_maps(model, edl.invert(model, image, fast_cfg, progress=False),
                                 torch.zeros(4, 4, dtype=torch.int64), fast_cfg, progress=False)
    assert torch.isfinite(maps).all()
    assert pipe.scheduler is scheduler and type(scheduler).__name__ == \
        "DPMSolverMultistepScheduler"
    assert pipe.scheduler.config.timestep_spacing == "linspace"  # the pipeline's own, untouched
    assert all(pipe.transformer.attn_processors[k] is processors[k] for k in processors)
    with pytest.raises(ValueError, match="SDXL only"):
        edl.from_pipeline(pipe, empty_prompt="zeros")
    sigma = edl.from_pipeline(tiny_pixart_pipeline(pipeline="PixArtSigmaPipeline"))
    assert sigma.architecture.name == "pixart-sigma"
    assert sigma.condition("").embeds.shape == (1, 300, 32)  # Σ's 300 T5 tokens
    bare = tiny_pixart_pipeline(pipeline="PixArtSigmaPipeline")
    bare.tokenizer = None  # optional in Σ's pipeline, needed here
    with pytest.raises(ValueError, match="tokenizer"):
        edl.from_pipeline(bare)


@pytest.mark.parametrize("pipeline, variant", [("PixArtAlphaPipeline", "alpha"),
                                               ("PixArtSigmaPipeline", "sigma")])
def test_save_pretrained_then_load_model_round_trip(tmp_path, pixart, image, pipeline, variant):
    tiny_pixart_pipeline(pipeline=pipeline).save_pretrained(tmp_path / "pixart")
    index = json.loads((tmp_path / "pixart" / "model_index.json").read_text())
    assert index["_class_name"] == pipeline
    loaded = edl.load_model(str(tmp_path / "pixart"), device="cpu", local_files_only=True)
    assert isinstance(loaded.architecture, PixArt) and not loaded.random_weights
    assert loaded.architecture.variant == variant
    if variant == "sigma":  # 300 T5 tokens instead of 120: the rest is α's
        loaded.architecture = PixArt("alpha")
        loaded._prompt_cache.clear()
    assert loaded.default_config == pixart.default_config.replace(num_masks=30)
    assert edl.inversion.schedule(loaded, 50).tolist()[:2] == [981, 961]
    assert_close(loaded.prompt_embeds("a cat"), pixart.prompt_embeds("a cat"), rel=1e-6)
    inv_loaded = edl.invert(loaded, image, pixart.default_config, progress=False)
    inv_direct = edl.invert(pixart, image, pixart.default_config, progress=False)
    assert_close(inv_loaded.noise, inv_direct.noise, rel=LATENT_REL, what="noise maps")


def test_architecture_arguments_are_checked():
    with pytest.raises(ValueError, match="variant"):
        PixArt("gamma")
    with pytest.raises(ValueError, match="max_sequence_length"):
        PixArt("sigma", max_sequence_length=0)
    assert PixArt("sigma").max_sequence_length == 300


# -- PixArt-XL-2's transformer on the meta device

@pytest.mark.parametrize("sample_size, image_size, grid, size_inputs",
                         [(128, 1024, 64, True), (128, 512, 32, True), (64, 512, 32, False)])
def test_real_pixart_layers_on_the_meta_device(sample_size, image_size, grid, size_inputs):
    """diffusers' defaults of PixArtTransformer2DModel are PixArt-XL-2's (28 blocks, 16 heads x
    72, patch 2, learned variance); T5-XXL's 4096 caption channels added. sample_size 128 is the
    1024 px model (α takes size inputs there), 64 the 512 px one."""
    from diffusers import PixArtTransformer2DModel

    with torch.device("meta"):
        transformer = PixArtTransformer2DModel(caption_channels=4096, sample_size=sample_size)
    assert edl.resolve_layers(transformer, image_size) == ("transformer_blocks.14.attn2",) * 2
    block = find_semantic_block(transformer)
    assert block.feature_size(image_size, 8) == grid
    assert len(block.cross_attention_layers) == 28  # the explorer's layer menu
    attn = dict(transformer.named_modules())["transformer_blocks.14.attn2"]
    assert attn.to_q.out_features == 1152 and attn.is_cross_attention
    assert transformer.use_additional_conditions is size_inputs
    assert transformer.config.out_channels == 2 * transformer.config.in_channels
