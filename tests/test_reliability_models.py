"""Loading a model never hangs and never gives a misleading message (issue 15): a hub that
accepts connections and never answers, a cached model while the hub is silent, paths that are
not diffusers folders, devices this machine does not have."""

import socket
import threading
import time
import warnings
from contextlib import contextmanager

import pytest
import torch

import emerdiff_lab as edl


@contextmanager
def silent_server(lifetime_s=30.0):
    """An HTTP endpoint on 127.0.0.1 that accepts connections and never answers, like a stuck
    proxy. Its thread stops when the block ends, or by itself after ``lifetime_s``."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    stop, held = threading.Event(), []

    def serve():
        deadline = time.monotonic() + lifetime_s
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                held.append(server.accept()[0])  # kept open, never read or answered
            except OSError:
                pass
        for connection in held:
            connection.close()
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(timeout=5)


@pytest.fixture
def online_hub(monkeypatch):
    """The tests run with HF_HUB_OFFLINE=1; these ones need huggingface_hub to try the network
    (only ever 127.0.0.1). Returns a function that points the hub endpoint at a URL."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return lambda url: monkeypatch.setattr(constants, "ENDPOINT", url)


def _cache_with_tiny_pipeline(cache, repo_id="org/model"):
    """A Hugging Face cache folder holding the tiny model as if downloaded from ``repo_id``."""
    from diffusers import StableDiffusionPipeline

    from emerdiff_lab.models import _tiny_components_cpu, ddpm_scheduler_from_config

    parts = _tiny_components_cpu(0)
    pipe = StableDiffusionPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], tokenizer=parts["tokenizer"],
        unet=parts["unet"], scheduler=ddpm_scheduler_from_config(parts["scheduler_config"]),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    repo, commit = cache / f"models--{repo_id.replace('/', '--')}", "0" * 40
    pipe.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return cache


def test_silent_hub_times_out_with_advice_on_working_offline(online_hub, tmp_path):
    with silent_server() as url:
        online_hub(url)
        start = time.monotonic()
        with pytest.raises(OSError) as caught:
            edl.load_model("org/model", device="cpu", cache_dir=tmp_path, hub_timeout=1)
        elapsed = time.monotonic() - start
    message = str(caught.value)
    assert f"hub at {url} could not be reached or did not answer within 1 s" in message
    assert "not in the local Hugging Face cache either" in message
    assert "HF_HUB_OFFLINE=1" in message and "load_model('tiny')" in message
    assert elapsed < 30  # diffusers alone waited for ever


def test_the_offline_advice_works_for_a_cached_model(online_hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    cache = _cache_with_tiny_pipeline(tmp_path / "cache")
    with silent_server() as url:
        online_hub(url)
        with pytest.warns(UserWarning, match="did not answer within 1 s.*from the local cache"):
            model = edl.load_model("org/model", device="cpu", cache_dir=cache, hub_timeout=1)
    assert model.model_id == "org/model" and not model.random_weights
    # What the message advises: HF_HUB_OFFLINE=1 (here set in-process) with the model cached.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no hub look-up, so no "could not be reached" warning
        model = edl.load_model("org/model", device="cpu", cache_dir=cache)
    assert model.unet.config.sample_size == 32


def test_paths_that_are_not_diffusers_folders_say_so(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="is a file, not a folder; expected a diffusers"):
        edl.load_model(str(tmp_path / "model.safetensors"), device="cpu")
    with pytest.raises(FileNotFoundError, match="'./no_such_folder' does not exist"):
        edl.load_model("./no_such_folder", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no model_index.json"):
        edl.load_model(str(tmp_path / "empty"), device="cpu")


@pytest.mark.parametrize("device", ["cuda", "cuda:99", "mps"])
def test_unavailable_device_is_refused_naming_the_available_ones(device):
    from emerdiff_lab.models import available_devices

    if device in available_devices() or (device == "cuda" and torch.cuda.is_available()):
        pytest.skip(f"{device} exists on this machine")
    with pytest.raises(ValueError, match=rf"device '{device}' is not available on this "
                                         rf"machine.*available: cpu"):
        edl.load_model("tiny", device=device)


def test_silent_hub_for_the_clip_model_times_out_too(online_hub, tmp_path, monkeypatch, capsys):
    import numpy as np
    from PIL import Image

    from emerdiff_lab.cli import main
    from emerdiff_lab.evaluation import cli as evaluation_cli
    from emerdiff_lab.models import HUB_TIMEOUT

    for folder in ("images", "labels"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    Image.new("RGB", (16, 16)).save(tmp_path / "data" / "images" / "a.png")
    Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(
        tmp_path / "data" / "labels" / "a.png")
    (tmp_path / "names.txt").write_text("thing\n")
    monkeypatch.setattr(evaluation_cli, "load_model_from_args",
                        lambda args: pytest.fail("the CLIP check comes first"))
    assert HUB_TIMEOUT == 10.0
    monkeypatch.setattr("emerdiff_lab.models.HUB_TIMEOUT", 1.0)  # shorter, for the test
    with silent_server() as url:
        online_hub(url)
        start = time.monotonic()
        code = main(["evaluate", "--dataset", "folder", "--root", str(tmp_path / "data"),
                     "--class-names", str(tmp_path / "names.txt"), "--protocol", "open-vocab",
                     "--clip-model", "org/clip", "--out", str(tmp_path / "out"), "--quiet"])
        elapsed = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 1 and elapsed < 30  # transformers alone retried for minutes
    assert "Could not load the CLIP model for 'org/clip'" in err
    assert "did not answer within 1 s" in err and "HF_HUB_OFFLINE=1" in err
    # advice for a CLIP model, on the command line (issue 20: it was Stable Diffusion's, in Python)
    assert "CLIPModel.save_pretrained" in err and "--clip-model /path/to/folder" in err
    assert "--local-files-only" in err and "leave out the open-vocab protocol" in err
    assert "StableDiffusionPipeline" not in err and "load_model(" not in err
    assert "local_files_only=True" not in err and err.count("\n") == 1


def test_python_users_get_python_advice_and_an_uncached_id_a_clear_message(tmp_path,
                                                                           monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(OSError) as caught:
        edl.load_model("org/uncached", device="cpu")
    message = str(caught.value)
    assert message.startswith("Could not load Stable Diffusion weights for 'org/uncached': not "
                              "in the local Hugging Face cache, and offline mode")
    assert "does not appear to have a file named" not in message
    assert "emerdiff_lab.load_model('tiny')" in message and "local_files_only=True" in message
    assert "--model" not in message and "--local-files-only" not in message


def test_half_precision_loads_print_nothing():
    """diffusers' ModelMixin.to logged "There are modules in UNet2DConditionModel that should be
    kept in float32: []" for every cast (its own handler prints it to stderr). A handler on the
    diffusers logger sees every record, whatever diffusers' propagation and verbosity."""
    import logging

    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append
    library = logging.getLogger("diffusers")
    library.addHandler(handler)
    try:
        for dtype in ("bfloat16", "float16"):
            model = edl.load_model("tiny", device="cpu", dtype=dtype)
            assert model.unet.dtype == model.vae.dtype == getattr(torch, dtype)
    finally:
        library.removeHandler(handler)
    assert [r.getMessage() for r in records if r.levelno >= logging.WARNING] == []
