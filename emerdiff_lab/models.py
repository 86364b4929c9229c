"""Loading a diffusion model into the one object every EmerDiff function takes.

One code path for every source: a named offline model (``"tiny"``, ``"tiny-sdxl"``,
``"tiny-pixart"``, ``"toyworld"``, ...), a Hugging Face hub id, a local diffusers folder, or a
pipeline the user already holds (SD 1.x/2.x, SDXL, PixArt-α/Σ, SD3/3.5 or FLUX.1;
:mod:`emerdiff_lab.architectures`). The model object and the device, dtype and scheduler
helpers live in :mod:`emerdiff_lab.core` and are re-exported here. Named models register
themselves with :func:`emerdiff_lab.core.register_model`; this module imports their modules at
its end only so that the registrations have happened once ``emerdiff_lab`` is imported.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch

from . import advice, architectures
from .core import (  # noqa: F401 - re-exported: the public and test-facing names of this module
    EmerDiffModel,
    _check_device_available,
    available_devices,
    ddpm_scheduler_from_config,
    moved,
    named_model_loader,
    named_models,
    register_model,
    resolve_device,
    resolve_dtype,
)

DEFAULT_MODEL_ID = "CompVis/stable-diffusion-v1-4"
TINY_MODEL_ID = "tiny"
TOYWORLD_MODEL_ID = "toyworld"  # the project's own trained pixel-space model
HUB_TIMEOUT = 10.0  # seconds to wait for the hub's answer to a model look-up
_moved = moved  # the name the loaders used before core.py existed


def load_model(
    model_id: str = DEFAULT_MODEL_ID,
    *,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    revision: str | None = None,
    variant: str | None = None,
    token: str | bool | None = None,
    cache_dir: str | Path | None = None,
    local_files_only: bool = False,
    seed: int = 0,
    hub_timeout: float = HUB_TIMEOUT,
    empty_prompt: str | None = None,
    offload: str | None = None,
) -> EmerDiffModel:
    """Loads a Stable Diffusion (1.x, 2.x, XL) or PixArt (α, Σ) model (hub id or local diffusers
    folder) or a named offline model.

    Args:
        model_id: a named offline model (``"tiny"``: SD 1.x layout, ``"tiny-sdxl"``: SDXL
            layout, ``"tiny-pixart"``: PixArt-α layout, ``"tiny-sd3"``, ``"tiny-flux"``:
            SD3.5 and FLUX.1-dev layouts, all random weights; ``"toyworld"``,
            ``"toyworld-latent"``, ``"toyworld-v2"`` (captioned): trained here),
            a hub id such as ``"CompVis/stable-diffusion-v1-4"``,
            ``"stabilityai/stable-diffusion-2-1-base"`` or
            ``"stabilityai/stable-diffusion-xl-base-1.0"``, or the path of a folder written by a
            pipeline's ``save_pretrained``. The pipeline class named in ``model_index.json``
            picks the architecture (docs/architectures.md).
        device: "cuda", "mps", "cpu"; None picks the best available.
        dtype: "float32" (default), "float16" or "bfloat16". On ToyWorld float16 labels 99.9%
            of pixels as float32 does; bfloat16 97.4%, with the same mIoU. On a GPU use float16;
            on a CPU with AMX units bfloat16 ran 3x faster than float32 (BENCHMARKS.md). SDXL's
            VAE then runs in float32 (its ``force_upcast``).
        revision, variant, token, cache_dir, local_files_only: passed to diffusers'
            ``from_pretrained`` (``variant="fp16"`` picks half-precision weight files).
        seed: weight seed of a random-weight named model (ignored for real weights).
        hub_timeout: seconds to wait for the Hugging Face hub to answer the look-up of a hub
            id; if it does not, the local cache is tried and, failing that, an OSError says how
            to work offline.
        empty_prompt: SDXL only: the condition of the empty prompt, ``"zeros"`` or
            ``"encoded"``; None follows the pipeline's ``force_zeros_for_empty_prompt`` (zeros
            for SDXL base). See :class:`emerdiff_lab.architectures.StableDiffusionXL`.
        offload: None (every component on ``device``), ``"model"`` (diffusers'
            ``enable_model_cpu_offload``: each of transformer, text encoders and VAE moves to
            ``device`` while it runs) or ``"sequential"`` (``enable_sequential_cpu_offload``:
            weights stream layer by layer; slowest, least memory). For models larger than the
            GPU, e.g. FLUX.1-dev (docs/architectures.md, the memory table).

    Raises:
        OSError: the weights cannot be had (no network, not cached, no such folder); the message
            names the model and points to ``load_model("tiny")`` for an offline run
            (``--model tiny`` on the command line: :mod:`emerdiff_lab.advice`).
        ValueError: a bad dtype, or a device this machine does not have.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    if offload not in (None, "model", "sequential"):
        raise ValueError(f"offload must be None, 'model' or 'sequential', got {offload!r}")
    if not isinstance(model_id, (str, Path)) or not str(model_id):
        raise ValueError(f"model_id must be 'tiny', a hub id or a folder path, got {model_id!r}")
    model_id = str(model_id)
    named = named_model_loader(model_id)
    if named is not None:
        return named(device, dtype, seed)

    import diffusers

    local_files_only, unreachable = _check_model_source(model_id, revision, token,
                                                        local_files_only, hub_timeout)
    if (local_files_only or _offline_mode()) and not Path(model_id).expanduser().is_dir() \
            and not advice.is_cached(model_id, revision=revision, cache_dir=cache_dir):
        # diffusers would say "does not appear to have a file named model_index.json.."
        raise OSError(advice.offline_advice(model_id, unreachable) if unreachable is not None
                      else advice.not_cached(model_id))
    class_name = None
    try:
        class_name = _pipeline_class_name(model_id, revision, token, cache_dir, local_files_only)
        architecture = architectures.by_pipeline_class(class_name, default=None)
        if architecture is None:  # another SD-family pipeline class: SD's loader, as always
            architecture = architectures.StableDiffusion()
        pipeline_class = getattr(diffusers, architecture.pipeline_class)
        pipe = pipeline_class.from_pretrained(
            model_id, **{_dtype_keyword(): dtype}, revision=revision, variant=variant, token=token,
            cache_dir=cache_dir, local_files_only=local_files_only,
            **architecture.pipeline_kwargs(),
        )
    except Exception as error:  # hub, HTTP and file errors come in many types
        if unreachable is not None:
            raise OSError(advice.offline_advice(model_id, unreachable)) from error
        named_class = "" if class_name is None else \
            f" (its model_index.json names {class_name}; supported: " \
            f"{[a.pipeline_class for a in architectures.ARCHITECTURES]})"
        raise OSError(
            f"Could not load Stable Diffusion weights for {model_id!r}{named_class}: "
            f"{type(error).__name__}: {error}. The weights must be in the local Hugging Face "
            f"cache, in a local diffusers folder, or downloadable. "
            f"{advice.without_weights('diffusion')}"
        ) from error
    if unreachable is not None:
        warnings.warn(f"{unreachable}; loaded {model_id!r} from the local cache", UserWarning,
                      stacklevel=2)
    if offload is None:
        pipe.to(device)
    else:  # accelerate's hooks move each component to the device while it runs
        getattr(pipe, f"enable_{offload}_cpu_offload")(device=device)
    return from_pipeline(pipe, model_id=model_id, revision=revision, empty_prompt=empty_prompt)


def _pipeline_class_name(model_id: str, revision, token, cache_dir, local_files_only) -> str:
    """The ``_class_name`` of a folder's or hub repository's ``model_index.json``."""
    path = Path(model_id).expanduser()
    if path.is_dir():
        return json.loads((path / "model_index.json").read_text())["_class_name"]
    from diffusers import DiffusionPipeline

    with warnings.catch_warnings():  # diffusers passes huggingface_hub a deprecated argument
        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
        config = DiffusionPipeline.load_config(model_id, revision=revision, token=token,
                                               cache_dir=cache_dir,
                                               local_files_only=local_files_only)
    return config["_class_name"]


def _check_model_source(model_id: str, revision: str | None, token, local_files_only: bool,
                        timeout: float) -> tuple[bool, str | None]:
    """Checks ``model_id`` before diffusers sees it: a path must be a diffusers folder, and the
    hub must answer a look-up of a hub id within ``timeout`` seconds.

    diffusers asks the hub for the repository's file list with no timeout, so a proxy that
    accepts connections and never answers hangs it for ever; asking first, with a timeout, turns
    that into a local-cache attempt. Returns ``(local_files_only, unreachable)``: when the hub
    could not be reached, local_files_only becomes True and unreachable says why.
    """
    path = Path(model_id).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise FileNotFoundError(
                f"model folder {model_id!r} has no model_index.json; expected a diffusers folder "
                f"written by StableDiffusionPipeline.save_pretrained. "
                f"{advice.without_weights('diffusion')}")
        return local_files_only, None
    if path.exists() or _looks_like_path(model_id):
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise FileNotFoundError(
            f"model path {model_id!r} {what}; expected a diffusers folder (holding "
            f"model_index.json, written by StableDiffusionPipeline.save_pretrained) or a hub id "
            f"such as {DEFAULT_MODEL_ID!r}. {advice.without_weights('diffusion')}")
    if local_files_only:
        return True, None
    problem = hub_problem(model_id, revision=revision, token=token, timeout=timeout)
    return problem is not None, problem


def hub_problem(repo_id: str, *, revision: str | None = None, token=None,
                timeout: float | None = None) -> str | None:
    """Asks the Hugging Face hub about ``repo_id`` with a timeout in seconds (None:
    :data:`HUB_TIMEOUT`, read at call time). Returns None when
    it answered (even "not found": the loader then reports that) or offline mode is on, else a
    sentence saying why it could not be reached; the caller then loads from the local cache.

    diffusers and transformers look up the hub with no timeout or with many retries, so a proxy
    that accepts connections and never answers would hang them for minutes or for ever.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    if constants.is_offline_mode():
        return None
    timeout = HUB_TIMEOUT if timeout is None else timeout
    api = HfApi()
    try:
        api.model_info(repo_id, revision=revision, token=token, timeout=timeout)
    except HFValidationError as error:
        raise ValueError(f"{repo_id!r} is neither a local folder nor a valid hub id such as "
                         f"{DEFAULT_MODEL_ID!r} ({error})") from error
    except HfHubHTTPError:
        return None  # the hub answered (not found, gated, ...): the loader reports it
    except Exception as error:  # noqa: BLE001 - timeouts, refused connections, proxy failures
        return (f"the Hugging Face hub at {api.endpoint} could not be reached or did not answer "
                f"within {timeout:g} s ({type(error).__name__}: {error})")
    return None


def _offline_mode() -> bool:
    from huggingface_hub import constants

    return constants.is_offline_mode()


def _looks_like_path(model_id: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything starting like a path, or with more parts,
    was meant as a folder."""
    return model_id.startswith((".", "/", "~")) or "\\" in model_id or model_id.count("/") > 1


def _dtype_keyword() -> str:
    """Newer diffusers renamed from_pretrained's ``torch_dtype`` to ``dtype``: use the one it
    has."""
    try:
        from diffusers.utils import deprecation_utils

        return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") \
            else "torch_dtype"
    except ImportError:  # older diffusers
        return "torch_dtype"


def from_pipeline(pipe, *, model_id: str | None = None, revision: str | None = None,
                  empty_prompt: str | None = None) -> EmerDiffModel:
    """Wraps a loaded diffusers ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``,
    ``PixArtAlphaPipeline`` or ``PixArtSigmaPipeline`` without changing it (a PixArt
    pipeline's ``transformer`` goes into the model's ``unet`` field).

    The pipeline keeps its own scheduler (EmerDiff builds a ``DDIMScheduler`` from its config)
    and attention processors (EmerDiff installs its own only for the length of a call and restores
    the pipeline's, attention slicing included). CPU offload is honoured: the model runs on the
    pipeline's execution device. ``empty_prompt``: SDXL's empty condition (see
    :func:`load_model`).
    """
    if getattr(pipe, "scheduler", None) is None:
        raise ValueError(f"from_pipeline expects a diffusers StableDiffusionPipeline, "
                         f"StableDiffusionXLPipeline or PixArt pipeline with a 'scheduler' "
                         f"component; got {type(pipe).__name__}")
    architecture = architectures.for_pipeline(pipe, empty_prompt)
    parts = architecture.components(pipe)
    device = torch.device(getattr(pipe, "_execution_device", None) or pipe.device)
    if model_id is None:
        model_id = getattr(pipe.config, "_name_or_path", None) or "pipeline"
    scheduler = architecture.scheduler(pipe.scheduler.config)
    return EmerDiffModel(
        **parts, scheduler=scheduler, device=device, dtype=parts["unet"].dtype,
        default_config=architecture.default_config(scheduler), model_id=str(model_id),
        revision=revision, random_weights=False, architecture=architecture,
    )


# Named offline models register themselves with core.register_model when their module is
# imported; importing them here (after everything above exists) makes load_model("tiny"),
# ("tiny-sdxl"), ("tiny-pixart"), ("toyworld") and ("toyworld-latent") available once
# emerdiff_lab is imported.
from . import tiny, tiny_flux, tiny_pixart, tiny_sd3, tiny_sdxl  # noqa: E402, F401
from .toyworld import latent_model as _toyworld_latent, model as _toyworld  # noqa: E402, F401
from .toyworld import captioned_model as _toyworld_v2  # noqa: E402, F401 - "toyworld-v2"

_tiny_components_cpu = tiny.tiny_components_cpu  # the name tests and scripts used before
