"""The architecture layer and SDXL on the tiny random-weight SDXL ("tiny-sdxl"): the engine's
invariants (exact inversion, lambda = 0, batched = reference, segment, processors restored),
SDXL's inputs (two encoders, pooled embedding, size ids, empty prompt, float32 VAE), loading
(pipeline, folder round trip), the real SDXL UNet config's layers on the meta device, timesteps
mapped by noise level, and the module boundaries (no architecture named in the engine)."""

import ast
import json
from pathlib import Path

import pytest
import torch

import emerdiff_lab as edl
from emerdiff_lab.architectures import Condition, StableDiffusion, StableDiffusionXL
from emerdiff_lab.layers import find_semantic_block
from emerdiff_lab.processors import AttentionControl, installed_processors
from emerdiff_lab.schedule import equivalent_timestep
from emerdiff_lab.tiny_sdxl import tiny_sdxl_pipeline
from conftest import SHARED
from tolerances import LATENT_REL, assert_close, assert_decoded_close

PACKAGE = Path(edl.__file__).resolve().parent
ENGINE_MODULES = ("features", "inversion", "modulation", "processors", "assembly",
                  "segmentation", "layers", "schedule", "flow_schedule", "joint_processors")


@pytest.fixture(scope="module")
def xl():
    return edl.load_model("tiny-sdxl", device="cpu")


@pytest.fixture(scope="module")
def fast_cfg(xl):
    """A 10-step schedule (t_m = 301: 4 modulated steps), two masks."""
    return xl.default_config.replace(num_inference_steps=10, modulation_timestep=301,
                                     num_masks=2)


@pytest.fixture(scope="module")
def image():
    return torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(7))


@pytest.fixture(scope="module")
def inversion(xl, fast_cfg, image):
    return edl.invert(xl, image, fast_cfg, progress=False)


@pytest.fixture(scope="module")
def halves():
    labels = torch.zeros(4, 4, dtype=torch.int64)  # the 4x4 grid of up_blocks.0 at 128 px
    labels[:, 2:] = 1
    return labels


# -- module boundaries

def _code_strings_and_names(path: Path) -> list[str]:
    """Identifiers and non-docstring string constants of a module (comments and docstrings,
    which may mention architectures, are left out)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and node.body and isinstance(node.body[0], ast.Expr) \
                and isinstance(node.body[0].value, ast.Constant):
            docstrings.add(id(node.body[0].value))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in docstrings:
            found.append(node.value)
        elif isinstance(node, ast.Name):
            found.append(node.id)
        elif isinstance(node, ast.Attribute):
            found.append(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            found.append(node.name)
        elif isinstance(node, ast.alias):
            found.append(node.name)
    return found


@pytest.mark.parametrize("module", ENGINE_MODULES)
def test_engine_modules_name_no_architecture(module):
    import re

    pattern = re.compile(r"sdxl|(^|[^a-z])xl([^a-z]|$)|text_encoder_2|addition_embed|"
                         r"added_cond|pixart|stablediffusion|sd3|text_encoder_3|"
                         r"pooled_projections", re.IGNORECASE)
    hits = [s for s in _code_strings_and_names(PACKAGE / f"{module}.py") if pattern.search(s)]
    assert not hits, f"{module}.py names an architecture: {hits} (use the architectures package)"


def test_core_imports_nothing_else_from_the_package():
    tree = ast.parse((PACKAGE / "core.py").read_text())
    relative = {node.module for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.level > 0}
    absolute = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names if alias.name.startswith("emerdiff_lab")]
    assert relative <= {"config"} and not absolute  # config imports nothing from the package


def test_named_models_are_registered():
    assert {"tiny", "tiny-sdxl", "toyworld", "toyworld-64", "toyworld-latent"} <= \
        set(edl.models.named_models())
    assert edl.load_model("tiny").architecture.name == "sd"


# -- SDXL inputs

def test_tiny_sdxl_parts(xl):
    assert isinstance(xl.architecture, StableDiffusionXL) and xl.random_weights
    assert xl.native_image_size == 256 and xl.vae_scale_factor == 8
    condition = xl.condition("a cat")
    # penultimate hidden states of both encoders side by side (16 + 32), pooled from encoder 2
    assert condition.embeds.shape == (1, 77, 48)
    assert condition.added["text_embeds"].shape == (1, 32)
    ids = xl.tokenizer("a cat", padding="max_length", max_length=77,
                       return_tensors="pt").input_ids
    first = xl.text_encoder(ids, output_hidden_states=True).hidden_states[-2]
    assert torch.equal(condition.embeds[..., :16], first)
    assert torch.equal(xl.text_encoder_2(ids).text_embeds, condition.added["text_embeds"])


def test_empty_prompt_is_zeros_by_default_and_encoded_on_request(xl):
    zeros = xl.condition("")
    assert not zeros.embeds.any() and not zeros.added["text_embeds"].any()
    encoded = edl.models.EmerDiffModel(**{**xl.__dict__, "_prompt_cache": {},
                                          "architecture": StableDiffusionXL("encoded")})
    assert encoded.condition("").embeds.abs().max() > 0
    with pytest.raises(ValueError, match="empty_prompt"):
        StableDiffusionXL("none")


def test_every_unet_call_gets_the_pooled_embedding_and_size_ids(xl, image, fast_cfg):
    seen = []

    def record(module, args, kwargs):
        seen.append(kwargs.get("added_cond_kwargs"))

    handle = xl.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        inv = edl.invert(xl, image, fast_cfg, batch_size=2, progress=False)
        edl.perturb(xl, inv, torch.eye(4, dtype=torch.bool), fast_cfg)
    finally:
        handle.remove()
    assert seen and all(kw is not None for kw in seen)
    for kw in seen:
        assert kw["time_ids"].tolist() == [[128, 128, 0, 0, 128, 128]] * len(kw["time_ids"])
        assert kw["text_embeds"].shape == (len(kw["time_ids"]), 32)


def test_bare_embeddings_without_the_pooled_one_are_refused(xl):
    latents = torch.zeros(1, 4, 16, 16)
    with pytest.raises(ValueError, match="pooled"):
        edl.inversion.unet_predict(xl, latents, torch.tensor([1]), torch.zeros(1, 77, 48))
    # the tensor model.prompt_embeds returned finds its pooled embedding again
    out = edl.inversion.unet_predict(xl, latents, torch.tensor([1]), xl.prompt_embeds(""))
    assert out.shape == latents.shape


def test_vae_runs_in_float32_where_float16_would_overflow(xl, image):
    half = edl.models.EmerDiffModel(**{**xl.__dict__, "_prompt_cache": {}, "_derived": {},
                                       "vae": tiny_sdxl_pipeline().vae.half(),
                                       "dtype": torch.float16})
    assert half.architecture.vae_dtype(half) == torch.float32
    latents = half.encode(image[None])
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()
    assert half.decode(latents).shape == (1, 3, 128, 128)
    assert next(half.vae.parameters()).dtype == torch.float16  # the user's VAE is not cast
    assert half.architecture.vae_dtype(edl.models.EmerDiffModel(
        **{**half.__dict__, "dtype": torch.bfloat16})) == torch.bfloat16
    sd = edl.load_model("tiny")
    assert StableDiffusion().vae_dtype(edl.models.EmerDiffModel(
        **{**sd.__dict__, "dtype": torch.float16})) == torch.float16  # unchanged for SD


# -- the engine's invariants on tiny-sdxl

def test_inversion_is_exact(xl, image):
    inv = edl.invert(xl, image, xl.default_config, full_trajectory=True, progress=False)
    assert inv.latents.shape == (51, 4, 16, 16)
    assert_close(edl.reconstruct(xl, inv), inv.latents, rel=LATENT_REL, what="SDXL latents")


def test_stepping_uses_the_inversions_schedule_not_the_schedulers_state(xl, inversion):
    xl.scheduler.set_timesteps(7)  # another length set by someone else in between
    assert inversion.schedule.num_inference_steps == 10
    assert_close(edl.reconstruct(xl, inversion), inversion.latents, rel=LATENT_REL,
                 what="latents after the scheduler was reset")


def test_zero_strength_gives_zero_maps(xl, fast_cfg, inversion, halves):
    maps = edl.pixel_change_maps(xl, inversion, halves, fast_cfg.replace(modulation_strength=0.0),
                                 progress=False)
    assert maps.shape == (2, 128, 128)
    assert_decoded_close(maps, torch.zeros_like(maps), what="SDXL lambda = 0 maps")


def test_batched_path_equals_reference_path(xl, fast_cfg, inversion, halves):
    batched = edl.pixel_change_maps(xl, inversion, halves, fast_cfg, progress=False)
    plain = edl.pixel_change_maps(xl, inversion, halves, fast_cfg, path="reference",
                                  progress=False)
    assert batched.abs().max() > 1e-3
    assert_decoded_close(batched, plain, what="SDXL batched and reference-path maps")


def test_segment_end_to_end_and_processors_restored(xl, fast_cfg, image):
    before = dict(xl.unet.attn_processors)
    seg = edl.segment(xl, image, fast_cfg, image_size=128, progress=False)
    assert seg.labels.shape == (128, 128) and seg.lowres_labels.shape == (4, 4)
    assert seg.diff_maps.shape == (seg.num_masks, 128, 128)
    assert 0 <= int(seg.labels.min()) and int(seg.labels.max()) < seg.num_masks
    assert seg.provenance["model_id"] == "tiny-sdxl" and seg.random_weights
    after = xl.unet.attn_processors
    assert after.keys() == before.keys() and all(after[k] is before[k] for k in before)
    with pytest.raises(RuntimeError, match="boom"):
        with installed_processors(xl.unet, None, AttentionControl()):
            raise RuntimeError("boom")
    assert all(xl.unet.attn_processors[k] is before[k] for k in before)


def test_features_come_from_the_lowest_resolution_block(xl, fast_cfg, image):
    features = edl.extract_features(xl, image, fast_cfg)
    assert features.shape == (4, 4, 64)  # up_blocks.0 at 128 px: 128 / 8 / 4


# -- loading

def test_from_pipeline_leaves_the_pipeline_as_it_was(image, fast_cfg):
    pipe = tiny_sdxl_pipeline()
    processors, scheduler = dict(pipe.unet.attn_processors), pipe.scheduler
    model = edl.from_pipeline(pipe, model_id="my-xl")
    assert isinstance(model.architecture, StableDiffusionXL)
    assert model.architecture.empty_prompt == "zeros"  # force_zeros_for_empty_prompt
    assert model.text_encoder_2 is pipe.text_encoder_2 and model.tokenizer_2 is pipe.tokenizer_2
    maps = edl.pixel_change_maps(model, edl.invert(model, image, fast_cfg, progress=False),
                                 torch.zeros(4, 4, dtype=torch.int64), fast_cfg, progress=False)
    assert torch.isfinite(maps).all()
    assert pipe.scheduler is scheduler and type(scheduler).__name__ == "EulerDiscreteScheduler"
    assert all(pipe.unet.attn_processors[k] is processors[k] for k in processors)
    encoded = edl.from_pipeline(pipe, empty_prompt="encoded")
    assert encoded.architecture.empty_prompt == "encoded"
    with pytest.raises(ValueError, match="SDXL only"):
        edl.from_pipeline(_sd_pipeline(), empty_prompt="zeros")


def _sd_pipeline():
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    parts = edl.tiny.tiny_components_cpu(0)
    return StableDiffusionPipeline(
        vae=parts["vae"], unet=parts["unet"], text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"], scheduler=DDIMScheduler.from_config(
            parts["scheduler_config"]),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def test_save_pretrained_then_load_model_round_trip(tmp_path, xl, image):
    tiny_sdxl_pipeline().save_pretrained(tmp_path / "xl")
    index = json.loads((tmp_path / "xl" / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    loaded = edl.load_model(str(tmp_path / "xl"), device="cpu", local_files_only=True)
    assert isinstance(loaded.architecture, StableDiffusionXL) and not loaded.random_weights
    assert loaded.default_config.modulation_timestep == 281  # SD's betas: t_m unchanged
    assert edl.inversion.schedule(loaded, 50).tolist()[:2] == [981, 961]
    assert_close(loaded.prompt_embeds("a cat"), xl.prompt_embeds("a cat"), rel=1e-6)
    inv_loaded = edl.invert(loaded, image, xl.default_config, progress=False)
    inv_direct = edl.invert(xl, image, xl.default_config, progress=False)
    assert_close(inv_loaded.noise, inv_direct.noise, rel=LATENT_REL, what="noise maps")


# -- the real SDXL UNet config, timesteps

@pytest.fixture(scope="module")
def sdxl_unet_config():
    path = SHARED / "data" / "sdxl-base-1.0-configs" / "unet_config.json"
    if not path.is_file():
        pytest.skip(f"../shared/data/sdxl-base-1.0-configs not found at {path.parent}")
    return json.loads(path.read_text())


@pytest.mark.parametrize("image_size, grid", [(1024, 32), (512, 16)])
def test_real_sdxl_layers_on_the_meta_device(sdxl_unet_config, image_size, grid):
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sdxl_unet_config)
    assert edl.resolve_layers(unet, image_size) == (
        "up_blocks.0.attentions.0.transformer_blocks.0.attn2",
        "up_blocks.0.attentions.2.transformer_blocks.0.attn2")
    block = find_semantic_block(unet)
    assert block.block_name == "up_blocks.0" and block.feature_size(image_size, 8) == grid
    assert [len(m) for m in block.attention_modules] == [10, 10, 10]
    assert len(block.cross_attention_layers) == 30  # the explorer's layer menu
    assert dict(unet.named_modules())[block.attention_modules[0][0]].to_q.out_features == 1280


def test_timesteps_keep_their_noise_level_across_schedules():
    from diffusers import DDIMScheduler

    sd = edl.load_model("tiny").scheduler
    assert equivalent_timestep(sd, 281, 50) == 281 and equivalent_timestep(sd, 1) == 1
    assert StableDiffusion().default_config(sd) == edl.EmerDiffConfig()
    linear = DDIMScheduler(beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                           set_alpha_to_one=False, steps_offset=1, clip_sample=False)
    mapped = equivalent_timestep(linear, 281, 50)
    assert mapped != 281 and mapped in edl.schedule.ddpm_schedule(linear, 50).timesteps.tolist()
    sd_alpha = float(sd.alphas_cumprod[281])
    neighbours = [float(linear.alphas_cumprod[mapped + d]) for d in (-20, 0, 20)]
    assert abs(neighbours[1] - sd_alpha) == min(abs(a - sd_alpha) for a in neighbours)


def test_sdxl_scheduler_config_gets_sds_end_condition(xl):
    # SDXL ships an Euler config without set_alpha_to_one/clip_sample: DDIM's defaults would
    # zero the last step's variance and clamp latents to [-1, 1]
    assert xl.scheduler.config.set_alpha_to_one is False
    assert xl.scheduler.config.clip_sample is False
    assert edl.inversion.posterior_std(xl, 1, 50) > 0.01


def test_condition_objects_pass_through(xl):
    condition = xl.condition("")
    assert edl.architectures.as_condition(xl, condition) is condition
    assert edl.architectures.as_condition(xl, condition.embeds) is condition
    assert isinstance(edl.architectures.as_condition(xl, torch.zeros(1, 2, 3)), Condition)
