"""Modulated denoising: lambda = 0 is a no-op, the batched path equals the plain reference path,
chunking changes nothing, and the UNet's own processors always come back."""

import pytest
import torch

import emerdiff_lab as edl
from emerdiff_lab.processors import AttentionControl, installed_processors
from tolerances import DECODED_ATOL, assert_decoded_close


@pytest.fixture(scope="module")
def fast_cfg(tiny_model):
    """A 10-step schedule (t_m = 301: 4 modulated steps): the same mechanics, 4x fewer calls."""
    return tiny_model.default_config.replace(num_inference_steps=10, modulation_timestep=301)


@pytest.fixture(scope="module")
def inversion(tiny_model, fast_cfg):
    image = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(5))
    return edl.invert(tiny_model, image, fast_cfg, progress=False)


@pytest.fixture(scope="module")
def lowres():
    # four masks on the tiny model's 4x4 grid at 128 px: quadrants
    labels = torch.zeros(4, 4, dtype=torch.int64)
    labels[:2, 2:], labels[2:, :2], labels[2:, 2:] = 1, 2, 3
    return labels


def test_perturbation_shapes_and_effect(tiny_model, fast_cfg, inversion):
    region = torch.zeros(4, 4, dtype=torch.bool)
    region[1:3, 1:3] = True
    pert = edl.perturb(tiny_model, inversion, region, fast_cfg)
    assert pert.plus.shape == pert.minus.shape == pert.reference.shape == (3, 128, 128)
    assert pert.diff.shape == (128, 128) and pert.diff.dtype == torch.float32
    assert 0 <= pert.plus.min() and pert.plus.max() <= 1
    assert pert.diff.max() > 1e-3  # the offset changes the image
    assert torch.allclose(pert.diff, (pert.minus - pert.plus).norm(dim=0))


@pytest.mark.parametrize("injection", [True, False])
def test_zero_strength_changes_nothing(tiny_model, fast_cfg, inversion, lowres, injection):
    cfg = fast_cfg.replace(modulation_strength=0.0, attention_injection=injection)
    maps = edl.pixel_change_maps(tiny_model, inversion, lowres, cfg, progress=False)
    assert maps.shape == (4, 128, 128)
    assert_decoded_close(maps, torch.zeros_like(maps), what="lambda = 0 maps")
    pert = edl.perturb(tiny_model, inversion, lowres == 0, cfg)
    reconstruction = tiny_model.decode(inversion.latents[-1:])[0].cpu()
    assert_decoded_close(pert.plus, reconstruction, what="I+ at lambda = 0")
    assert_decoded_close(pert.minus, reconstruction, what="I- at lambda = 0")


@pytest.mark.parametrize("injection", [True, False])
def test_zero_strength_bound_still_catches_a_tiny_strength(tiny_model, fast_cfg, inversion,
                                                           lowres, injection):
    """The lambda = 0 bound is loose enough for any CPU's rounding, and still tight enough that
    a stray offset of lambda = 1e-3 (maps of about 4e-3) breaks it."""
    cfg = fast_cfg.replace(modulation_strength=1e-3, attention_injection=injection)
    maps = edl.pixel_change_maps(tiny_model, inversion, lowres, cfg, progress=False)
    assert maps.abs().max() > 2 * DECODED_ATOL
    with pytest.raises(AssertionError, match="lambda = 1e-3 maps"):
        assert_decoded_close(maps, torch.zeros_like(maps), what="lambda = 1e-3 maps")


@pytest.mark.parametrize("changes", [
    {},
    {"attention_injection": False},
    {"offset_placement": "before_projection"},
])
def test_batched_path_equals_reference_path(tiny_model, fast_cfg, inversion, lowres, changes):
    cfg = fast_cfg.replace(**changes)
    batched = edl.pixel_change_maps(tiny_model, inversion, lowres, cfg, progress=False)
    plain = edl.pixel_change_maps(tiny_model, inversion, lowres, cfg, path="reference",
                                  progress=False)
    assert batched.abs().max() > 1e-3
    assert_decoded_close(batched, plain, what="batched and reference-path maps")


@pytest.mark.parametrize("batch_size", [2, 3, 5])
def test_chunking_changes_nothing(tiny_model, fast_cfg, inversion, lowres, batch_size):
    cfg = fast_cfg
    whole = edl.pixel_change_maps(tiny_model, inversion, lowres, cfg.replace(batch_size=9),
                                  progress=False)
    chunked = edl.pixel_change_maps(tiny_model, inversion, lowres,
                                    cfg.replace(batch_size=batch_size, decode_batch_size=3),
                                    progress=False)
    assert_decoded_close(chunked, whole, what="chunked and whole-batch maps")


def test_injection_and_placement_matter(tiny_model, fast_cfg, inversion, lowres):
    cfg = fast_cfg
    base = edl.pixel_change_maps(tiny_model, inversion, lowres, cfg, progress=False)
    no_injection = edl.pixel_change_maps(
        tiny_model, inversion, lowres, cfg.replace(attention_injection=False), progress=False)
    before = edl.pixel_change_maps(
        tiny_model, inversion, lowres, cfg.replace(offset_placement="before_projection"),
        progress=False)
    # differences far above the bound that equal paths are held to
    assert (base - no_injection).abs().max() > 10 * DECODED_ATOL
    assert (base - before).abs().max() > 10 * DECODED_ATOL


def test_processors_are_restored_after_an_exception(tiny_model, fast_cfg, inversion):
    unet = tiny_model.unet
    before = dict(unet.attn_processors)
    with pytest.raises(RuntimeError, match="boom"):
        with installed_processors(unet, None, AttentionControl()):
            assert all(p is not before[k] for k, p in unet.attn_processors.items())
            raise RuntimeError("boom")
    after = unet.attn_processors
    assert after.keys() == before.keys()
    assert all(after[k] is before[k] for k in before)

    # an error raised inside the UNet mid-denoising: processors come back too
    bad = torch.zeros(4, 4, dtype=torch.bool)
    broken = inversion.__class__(**{**inversion.__dict__,
                                    "prompt_embeds": torch.zeros(1, 77, 7)})  # wrong width
    with pytest.raises(RuntimeError):
        edl.perturb(tiny_model, broken, bad, fast_cfg)
    assert all(unet.attn_processors[k] is before[k] for k in before)


@pytest.mark.parametrize("region, message", [
    (torch.zeros(5, 5, dtype=torch.bool), r"\(4, 4\)"),
    (torch.full((4, 4), 2), "only 0 and 1"),
])
def test_bad_regions_are_refused(tiny_model, fast_cfg, inversion, region, message):
    with pytest.raises(ValueError, match=message):
        edl.perturb(tiny_model, inversion, region, fast_cfg)


def test_unknown_path_is_refused(tiny_model, fast_cfg, inversion, lowres):
    with pytest.raises(ValueError, match="path must be one of"):
        edl.pixel_change_maps(tiny_model, inversion, lowres, fast_cfg, path="fast")


@pytest.mark.parametrize("changes", [{}, {"attention_injection": False},
                                     {"offset_placement": "before_projection"}])
def test_replayed_reference_pass_equals_batched_path(tiny_model, fast_cfg, inversion, lowres,
                                                     changes):
    """A recorded unmodulated pass, replayed (two batch elements per call), gives the batched
    path's images: the explorer's fast path computes the same thing."""
    cfg = fast_cfg.replace(**changes)
    reference = edl.record_reference(tiny_model, inversion, cfg)
    for mask in range(2):
        batched = edl.perturb(tiny_model, inversion, lowres == mask, cfg)
        replayed = edl.perturb(tiny_model, inversion, lowres == mask, cfg, reference=reference)
        assert batched.diff.max() > 1e-3
        for name in ("plus", "minus", "diff", "reference"):
            assert_decoded_close(getattr(replayed, name), getattr(batched, name),
                                 what=f"replayed and batched {name}")


def test_replaying_another_images_pass_is_caught(tiny_model, fast_cfg, inversion, lowres):
    """The replay really uses the recorded probabilities: those of another image change the
    result far beyond the bound, and a pass of another inversion or setting is refused."""
    other = edl.invert(tiny_model, torch.rand(3, 128, 128, generator=torch.Generator()
                                              .manual_seed(6)), fast_cfg, progress=False)
    foreign = edl.record_reference(tiny_model, other, fast_cfg)
    with pytest.raises(ValueError, match="another Inversion"):
        edl.perturb(tiny_model, inversion, lowres == 0, fast_cfg, reference=foreign)
    with pytest.raises(ValueError, match="t_m=301"):
        edl.perturb(tiny_model, inversion, lowres == 0, fast_cfg.replace(attention_injection=False),
                    reference=edl.record_reference(tiny_model, inversion, fast_cfg))
    own = edl.record_reference(tiny_model, inversion, fast_cfg)
    swapped = edl.ReferencePass(inversion=inversion, timestep=own.timestep, injection=True,
                                probabilities=foreign.probabilities, latent=own.latent)
    right = edl.perturb(tiny_model, inversion, lowres == 0, fast_cfg, reference=own)
    wrong = edl.perturb(tiny_model, inversion, lowres == 0, fast_cfg, reference=swapped)
    assert (right.diff - wrong.diff).abs().max() > 10 * DECODED_ATOL


def test_reference_pass_memory_is_known_before_running(tiny_model, fast_cfg, inversion):
    from emerdiff_lab.modulation import reference_pass_nbytes

    expected = reference_pass_nbytes(tiny_model, inversion, fast_cfg)
    assert edl.record_reference(tiny_model, inversion, fast_cfg).nbytes == expected > 0
    assert edl.record_reference(tiny_model, inversion, fast_cfg, max_bytes=expected - 1) is None
    no_injection = fast_cfg.replace(attention_injection=False)
    assert reference_pass_nbytes(tiny_model, inversion, no_injection) == 0
    assert edl.record_reference(tiny_model, inversion, no_injection, max_bytes=0).nbytes == 0
