"""Edit-friendly DDPM inversion: schedule, exactness, noise maps, prediction types."""

import pytest
import torch

import emerdiff_lab as edl
from emerdiff_lab.inversion import ddpm_step, posterior_std, schedule
from tolerances import LATENT_REL, assert_close


def test_schedule_is_sds_50_step_ddpm(tiny_model):
    timesteps = schedule(tiny_model, 50)
    assert timesteps[:3].tolist() == [981, 961, 941]
    assert timesteps[-1].item() == 1
    assert len(set(timesteps.tolist())) == 50  # no repeated 961 as with SD 1.4's PNDM config


def test_posterior_std_matches_the_schedulers_step(tiny_model):
    schedule(tiny_model, 10)  # ddpm_step must not depend on the schedule set by another call
    x, eps = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    for t in (981, 281, 1):
        zero = ddpm_step(tiny_model, eps, t, x, torch.zeros_like(x), 50)
        one = ddpm_step(tiny_model, eps, t, x, torch.ones_like(x), 50)
        # one float32 step on x of magnitude ~4: rounding of a few ulps of x, not of the std
        assert_close(one - zero, torch.full_like(x, posterior_std(tiny_model, t, 50)),
                     rel=1e-5, scale=float(x.abs().max()), what=f"posterior std at t={t}")
    # the last step keeps SD's alpha-bar at t = 0 (0.99915): variance about 4e-4, not zero
    assert posterior_std(tiny_model, 1, 50) ** 2 == pytest.approx(4e-4, rel=0.2)


@pytest.fixture(scope="module")
def full_inversion(tiny_model):
    image = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(3))
    return edl.invert(tiny_model, image, tiny_model.default_config, full_trajectory=True,
                      progress=False)


def test_shapes_and_dtypes(full_inversion):
    inv = full_inversion
    assert inv.timesteps.shape == (50,) and inv.timesteps.dtype == torch.int64
    assert inv.latents.shape == (51, 4, 16, 16) and inv.latents.dtype == torch.float32
    assert inv.noise.shape == (50, 4, 16, 16)
    assert bool((inv.timesteps[:-1] > inv.timesteps[1:]).all())
    assert inv.noise.abs().flatten(1).amax(1).min() > 0  # no noise map is zeroed, the last too
    assert torch.isfinite(inv.noise).all()


@pytest.mark.parametrize("start", [981, 281, 21, 1])
def test_denoising_from_any_stored_step_reproduces_the_latents(tiny_model, full_inversion, start):
    visited = edl.reconstruct(tiny_model, full_inversion, start)
    index = full_inversion.index_of(start)
    assert_close(visited, full_inversion.latents[index:], rel=LATENT_REL,
                 what=f"latents reconstructed from t={start}")


def test_reconstruction_bound_still_catches_a_zeroed_noise_map(tiny_model, full_inversion):
    """LATENT_REL is loose enough for any CPU, and still catches the bug of a zeroed last noise
    map (the t = 1 -> x_0 step, whose variance SD's end condition keeps at about 4e-4)."""
    noise = full_inversion.noise.clone()
    noise[-1] = 0
    broken = full_inversion.__class__(**{**full_inversion.__dict__, "noise": noise})
    visited = edl.reconstruct(tiny_model, broken, 21)
    with pytest.raises(AssertionError, match="zeroed"):
        assert_close(visited, full_inversion.latents[-3:], rel=LATENT_REL, what="zeroed")


def test_limited_inversion_is_the_tail_of_the_full_one(tiny_model, full_inversion):
    limited = edl.invert(tiny_model, full_inversion.image, tiny_model.default_config,
                         progress=False)
    assert limited.timesteps.tolist() == list(range(281, 0, -20))
    tail = full_inversion.index_of(281)
    # batches of other shapes than the full trajectory's: equal up to rounding, not bit-equal
    assert_close(limited.latents, full_inversion.latents[tail:], rel=LATENT_REL, what="latents")
    assert_close(limited.noise, full_inversion.noise[tail:], rel=LATENT_REL, what="noise maps")


def test_batch_size_does_not_change_the_result(tiny_model, full_inversion):
    chunked = edl.invert(tiny_model, full_inversion.image, tiny_model.default_config,
                         batch_size=4, progress=False)
    tail = full_inversion.index_of(281)
    assert_close(chunked.noise, full_inversion.noise[tail:], rel=LATENT_REL, what="noise maps")


def test_v_prediction_model_inverts_exactly(tiny_model):
    v_model = edl.models.EmerDiffModel(**{**tiny_model.__dict__, "_prompt_cache": {}})
    v_model.scheduler = edl.models.ddpm_scheduler_from_config(
        dict(tiny_model.scheduler.config, prediction_type="v_prediction"))
    assert v_model.prediction_type == "v_prediction"
    image = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(4))
    inv = edl.invert(v_model, image, v_model.default_config, progress=False)
    assert_close(edl.reconstruct(v_model, inv), inv.latents, rel=LATENT_REL,
                 what="v-prediction reconstruction")


def test_timestep_off_the_schedule_is_refused(tiny_model, image128):
    cfg = tiny_model.default_config.replace(modulation_timestep=280)
    with pytest.raises(ValueError, match="modulation_timestep=280 is not on the 50-step"):
        edl.invert(tiny_model, image128, cfg)
    inv = edl.invert(tiny_model, image128, tiny_model.default_config, progress=False)
    with pytest.raises(ValueError, match="not in this inversion"):
        inv.index_of(481)


def test_reconstruction_ignores_a_schedule_set_by_a_later_call(tiny_model, full_inversion):
    """The scheduler holds the schedule's length as state; an inversion made on 50 steps must
    still be denoised on 50 steps after another call set a 10-step schedule."""
    schedule(tiny_model, 10)
    visited = edl.reconstruct(tiny_model, full_inversion, 281)
    assert_close(visited[-1], full_inversion.latents[-1], rel=LATENT_REL, what="x_0")
