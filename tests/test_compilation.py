"""compile_model: compiles the ResNet blocks and the VAE decoder, and changes no output."""

import pytest
import torch

import emerdiff_lab as edl
from tolerances import assert_decoded_close


@pytest.fixture(scope="module")
def fast_cfg(tiny_model):
    return tiny_model.default_config.replace(num_inference_steps=10, modulation_timestep=301)


@pytest.mark.slow
def test_compiled_model_gives_the_eager_maps(tiny_model, fast_cfg):
    """aot_eager runs dynamo and AOT autograd on every compiled region (graph breaks or
    guards that misfire would show here) without slow code generation."""
    image = torch.rand(3, 64, 64, generator=torch.Generator().manual_seed(1))
    inversion = edl.invert(tiny_model, image, fast_cfg, progress=False)
    lowres = torch.arange(4).view(2, 2)  # four one-cell masks on the 2x2 grid at 64 px
    eager = edl.pixel_change_maps(tiny_model, inversion, lowres, fast_cfg, progress=False)

    compiled = edl.load_model("tiny", device="cpu")
    edl.compile_model(compiled, backend="aot_eager")
    resnets = [m for m in compiled.unet.modules() if type(m).__name__ == "ResnetBlock2D"]
    assert resnets and all(m._compiled_call_impl is not None for m in resnets)
    assert compiled.vae.decoder._compiled_call_impl is not None
    maps = edl.pixel_change_maps(compiled, inversion, lowres, fast_cfg, progress=False)
    assert_decoded_close(maps, eager, what="compiled and eager maps")


@pytest.mark.parametrize("parts", ["unet_resnets", ["vae"], ("unet_resnets", "text_encoder")])
def test_unknown_parts_are_refused(tiny_model, parts):
    with pytest.raises(ValueError, match="parts must be"):
        edl.compile_model(tiny_model, parts=parts)


@pytest.mark.parametrize("argv, compiled", [([], False), (["--compile"], True)])
def test_cli_compile_option_reaches_the_model(monkeypatch, argv, compiled):
    import argparse

    from emerdiff_lab import cli, compilation

    calls = []
    monkeypatch.setattr(compilation, "compile_model", lambda model: calls.append(model) or model)
    parser = argparse.ArgumentParser()
    cli.add_model_options(parser)
    cli.add_compile_option(parser)
    model = cli.load_model_from_args(parser.parse_args(["--device", "cpu", *argv]))
    assert calls == ([model] if compiled else [])
