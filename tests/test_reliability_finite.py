"""NaN or inf anywhere between the image and the labels stops the image with a message that
names the stage and the likely cause (issue 20): a too large lambda gave 100% NaN maps and
labels of zeros with exit 0, through the CLI and the Python API alike."""

import pytest
import torch

import emerdiff_lab as edl
from emerdiff_lab.finite import NonFiniteError


@pytest.fixture(scope="module")
def cfg(tiny_model):
    return tiny_model.default_config.replace(num_masks=2, num_inference_steps=5,
                                             modulation_timestep=201)


@pytest.fixture
def image():
    return torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(0))


def test_a_lambda_too_large_for_float32_stops_segment(tiny_model, cfg, image):
    with pytest.raises(NonFiniteError, match=r"^the modulated latents hold non-finite values "
                                             r"\(1024 NaN, 0 inf of 1024\), so no labels were "
                                             r"made: lambda \(modulation_strength 1e\+20\) is "
                                             r"most likely too large for float32"):
        edl.segment(tiny_model, image, cfg.replace(modulation_strength=1e20), image_size=64,
                    progress=False)


def test_a_lambda_too_large_for_float16_says_so(cfg, image):
    model = edl.load_model("tiny", device="cpu", dtype="float16")
    with pytest.raises(NonFiniteError, match=r"too large for float16 \(the paper uses 10\); use "
                                             r"a smaller one, or float32 weights"):
        edl.segment(model, image, cfg.replace(modulation_strength=1e5), image_size=64,
                    progress=False)
    seg = edl.segment(model, image, cfg, image_size=64, progress=False)  # lambda 10 works
    assert seg.labels.shape == (64, 64)


def test_a_float16_vae_overflow_is_named(cfg, image, monkeypatch):
    model = edl.load_model("tiny", device="cpu", dtype="float16")
    decode = model.decode
    monkeypatch.setattr(model, "decode", lambda latents: decode(latents) * torch.nan)
    with pytest.raises(NonFiniteError, match=r"^the decoded images hold non-finite values.*the "
                                             r"VAE decoder overflowed in float16"):
        edl.segment(model, image, cfg, image_size=64, progress=False)
    session = edl.session.Session(model, image, cfg=cfg, image_size=64)
    region = session.cell_region(0, 0)
    with pytest.raises(NonFiniteError, match="the decoded images"):
        session.perturbation(region, path="batched")


def test_non_finite_features_and_trajectories_are_named(tiny_model, cfg, image):
    broken = tiny_model.encode(image[None])[0] * torch.inf
    with pytest.raises(NonFiniteError, match=r"^the features at up_blocks\.1\..* hold "
                                             r"non-finite values"):
        edl.extract_features(tiny_model, image, cfg, latent=broken)
    with pytest.raises(NonFiniteError, match=r"^the latents of the inversion trajectory hold "):
        edl.invert(tiny_model, image, cfg, latent=broken, progress=False)
