"""Loading a diffusion model into the one object every EmerDiff function takes.

One code path for every source: the offline ``"tiny"`` model, a Hugging Face hub id, a local
diffusers folder, or a ``StableDiffusionPipeline`` the user already holds.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import EmerDiffConfig

DEFAULT_MODEL_ID = "CompVis/stable-diffusion-v1-4"
TINY_MODEL_ID = "tiny"
TOYWORLD_MODEL_ID = "toyworld"  # the project's own trained pixel-space model
HUB_TIMEOUT = 10.0  # seconds to wait for the hub's answer to a model look-up

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}


@dataclass(eq=False)
class EmerDiffModel:
    """A latent (or pixel-space) diffusion model ready for EmerDiff.

    Attributes:
        unet: the ``UNet2DConditionModel``.
        vae: the ``AutoencoderKL``, or None for a pixel-space model (images are their own latents).
        text_encoder, tokenizer: the CLIP text encoder and its tokenizer.
        scheduler: a ``DDIMScheduler`` built from the model's own scheduler config. Stepped with
            ``eta=1`` it is the DDPM sampler with SD's end condition (``set_alpha_to_one=False``).
        device, dtype: where and in which precision the networks run. Scheduler arithmetic and
            stored latents stay in float32.
        default_config: the ``EmerDiffConfig`` that suits this model (the paper's values for SD).
        model_id: where the weights came from ("tiny", a hub id or a folder).
        revision: the hub revision asked for, if any.
        random_weights: True when the weights are random (their output shows mechanics only).
    """

    unet: torch.nn.Module
    vae: torch.nn.Module | None
    text_encoder: torch.nn.Module
    tokenizer: object
    scheduler: object
    device: torch.device
    dtype: torch.dtype
    default_config: EmerDiffConfig = field(default_factory=EmerDiffConfig)
    model_id: str = "unknown"
    revision: str | None = None
    random_weights: bool = False
    _prompt_cache: dict = field(default_factory=dict, repr=False)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side (8 for SD, 1 for a pixel-space model)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_image_size(self) -> int:
        """The image side the model was trained at: 512 for SD 1.x, 768 for SD 2.x-768,
        256 for the tiny model, 64 for ToyWorld."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor

    @property
    def prediction_type(self) -> str:
        return self.scheduler.config.prediction_type

    @torch.no_grad()
    def prompt_embeds(self, prompt: str) -> torch.Tensor:
        """Text embeddings of one prompt, (1, tokens, width), in the model's dtype; cached."""
        if prompt not in self._prompt_cache:
            ids = self.tokenizer(prompt, padding="max_length", truncation=True,
                                 max_length=self.tokenizer.model_max_length,
                                 return_tensors="pt").input_ids
            embeds = self.text_encoder(ids.to(self.device))[0]
            self._prompt_cache[prompt] = embeds.to(self.dtype)
        return self._prompt_cache[prompt]

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> latents (B, C, H/f, W/f) float32, scaled for the UNet.

        Uses the mean of the VAE posterior, so that encoding is deterministic.
        """
        pixels = images.to(self.device, torch.float32) * 2 - 1
        if self.vae is None:
            return pixels
        latents = self.vae.encode(pixels.to(self.dtype)).latent_dist.mean
        return latents.float() * self.vae.config.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> images (B, 3, H, W) float32 clamped to [0, 1]."""
        latents = latents.to(self.device, torch.float32)
        if self.vae is None:
            pixels = latents
        else:
            scaled = latents / self.vae.config.scaling_factor
            pixels = self.vae.decode(scaled.to(self.dtype)).sample.float()
        return ((pixels + 1) / 2).clamp(0, 1)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    """``"float16"``/``"bfloat16"``/``"float32"`` (or a torch dtype, or None = float32)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype.lower() in _DTYPES:
        return _DTYPES[dtype.lower()]
    raise ValueError(f"dtype must be one of {sorted(set(_DTYPES))} or a torch.dtype, "
                     f"got {dtype!r}")


def resolve_device(device: str | torch.device | None) -> torch.device:
    """A torch device; None picks cuda, then mps, then cpu."""
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device must be 'cpu', 'cuda', 'cuda:N' or 'mps', got {device!r}") \
            from error
    _check_device_available(resolved)
    return resolved


def available_devices() -> list[str]:
    """The devices this machine and this torch build can run on, e.g. ``["cpu", "cuda:0"]``."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{index}" for index in range(torch.cuda.device_count())]
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        names.append("mps")
    if hasattr(torch, "xpu") and torch.xpu.is_available():
        names += [f"xpu:{index}" for index in range(torch.xpu.device_count())]
    return names


def _check_device_available(device: torch.device) -> None:
    """Raises ValueError naming the available devices when ``device`` is not one of them (torch
    itself fails only at the first tensor moved, with "Torch not compiled with CUDA enabled")."""
    if device.type not in ("cuda", "mps", "xpu"):
        return  # cpu always works; meta and other special devices are the caller's business
    available = available_devices()
    if device.type == "mps":
        ok = "mps" in available
    else:
        ok = any(name.startswith(device.type + ":") for name in available) and (
            device.index is None or f"{device.type}:{device.index}" in available)
    if not ok:
        build = "" if device.type != "cuda" or torch.version.cuda or torch.version.hip else \
            f" (this torch {torch.__version__} is built without CUDA)"
        raise ValueError(f"device {str(device)!r} is not available on this machine{build}; "
                         f"available: {', '.join(available)}")


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
) -> EmerDiffModel:
    """Loads a Stable Diffusion model (hub id or local diffusers folder) or the offline ``"tiny"``.

    Args:
        model_id: ``"tiny"`` (offline, random weights), a hub id such as
            ``"CompVis/stable-diffusion-v1-4"`` or ``"stabilityai/stable-diffusion-2-1-base"``, or
            the path of a folder written by ``StableDiffusionPipeline.save_pretrained``.
        device: "cuda", "mps", "cpu"; None picks the best available.
        dtype: "float32" (default), "float16" or "bfloat16". On ToyWorld float16 labels 99.9%
            of pixels as float32 does; bfloat16 97.4%, with the same mIoU. On a GPU use float16;
            on a CPU with AMX units bfloat16 ran 3x faster than float32 (BENCHMARKS.md).
        revision, variant, token, cache_dir, local_files_only: passed to diffusers'
            ``from_pretrained`` (``variant="fp16"`` picks half-precision weight files).
        seed: weight seed of the tiny model (ignored for real weights).
        hub_timeout: seconds to wait for the Hugging Face hub to answer the look-up of a hub
            id; if it does not, the local cache is tried and, failing that, an OSError says how
            to work offline.

    Raises:
        OSError: the weights cannot be had (no network, not cached, no such folder); the message
            names the model and points to ``load_model("tiny")`` for an offline run.
        ValueError: a bad dtype, or a device this machine does not have.
    """
    device = resolve_device(device)
    dtype = resolve_dtype(dtype)
    if not isinstance(model_id, (str, Path)) or not str(model_id):
        raise ValueError(f"model_id must be 'tiny', a hub id or a folder path, got {model_id!r}")
    model_id = str(model_id)
    if model_id == TINY_MODEL_ID:
        return _load_tiny(device, dtype, seed)
    if model_id in (TOYWORLD_MODEL_ID, "toyworld-64"):  # "toyworld-64": the same 64 px model
        from .toyworld import load_toyworld

        return load_toyworld(device=device, dtype=dtype)
    if model_id == "toyworld-latent":  # 256 px VAE + latent UNet (MODEL_CARD.md, issue 12)
        from .toyworld.latent_model import load_toyworld_latent

        return load_toyworld_latent(device=device, dtype=dtype)

    from diffusers import StableDiffusionPipeline

    local_files_only, unreachable = _check_model_source(model_id, revision, token,
                                                        local_files_only, hub_timeout)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            model_id, **{_dtype_keyword(): dtype}, revision=revision, variant=variant, token=token,
            cache_dir=cache_dir, local_files_only=local_files_only,
            safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
    except Exception as error:  # hub, HTTP and file errors come in many types
        if unreachable is not None:
            raise OSError(offline_advice(model_id, unreachable)) from error
        raise OSError(
            f"Could not load Stable Diffusion weights for {model_id!r}: "
            f"{type(error).__name__}: {error}. The weights must be in the local Hugging Face "
            f"cache, in a local diffusers folder, or downloadable. For an offline run without "
            f"weights use emerdiff_lab.load_model('tiny') (random weights)."
        ) from error
    if unreachable is not None:
        warnings.warn(f"{unreachable}; loaded {model_id!r} from the local cache", UserWarning,
                      stacklevel=2)
    pipe.to(device)
    return from_pipeline(pipe, model_id=model_id, revision=revision)


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
                f"written by StableDiffusionPipeline.save_pretrained. For an offline run without "
                f"weights use emerdiff_lab.load_model('tiny') (random weights).")
        return local_files_only, None
    if path.exists() or _looks_like_path(model_id):
        what = "is a file, not a folder" if path.exists() else "does not exist"
        raise FileNotFoundError(
            f"model path {model_id!r} {what}; expected a diffusers folder (holding "
            f"model_index.json, written by StableDiffusionPipeline.save_pretrained) or a hub id "
            f"such as {DEFAULT_MODEL_ID!r}. For an offline run without weights use "
            f"emerdiff_lab.load_model('tiny') (random weights).")
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


def _looks_like_path(model_id: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything starting like a path, or with more parts,
    was meant as a folder."""
    return model_id.startswith((".", "/", "~")) or "\\" in model_id or model_id.count("/") > 1


def offline_advice(model_id: str, problem: str, what: str = "Stable Diffusion weights") -> str:
    """The message when the hub cannot be reached and the model is not in the local cache.

    HF_HUB_OFFLINE=1 only helps once the weights are cached, so the advice says so."""
    return (f"Could not load {what} for {model_id!r}: {problem}, and they "
            f"are not in the local Hugging Face cache either. To work offline: download them "
            f"once where the hub is reachable (they go to the cache), then set HF_HUB_OFFLINE=1 "
            f"before starting Python (or pass --local-files-only / local_files_only=True); or "
            f"pass the path of a folder written by StableDiffusionPipeline.save_pretrained. "
            f"Behind a proxy, set HTTPS_PROXY. For an offline run without weights use "
            f"emerdiff_lab.load_model('tiny') (random weights).")


def _dtype_keyword() -> str:
    """Newer diffusers renamed from_pretrained's ``torch_dtype`` to ``dtype``: use the one it
    has."""
    try:
        from diffusers.utils import deprecation_utils

        return "dtype" if hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE") \
            else "torch_dtype"
    except ImportError:  # older diffusers
        return "torch_dtype"


def from_pipeline(pipe, *, model_id: str | None = None,
                  revision: str | None = None) -> EmerDiffModel:
    """Wraps a loaded diffusers ``StableDiffusionPipeline`` without changing it.

    The pipeline keeps its own scheduler (EmerDiff builds a ``DDIMScheduler`` from its config)
    and attention processors (EmerDiff installs its own only for the length of a call and restores
    the pipeline's, attention slicing included). CPU offload is honoured: the model runs on the
    pipeline's execution device.
    """
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not hasattr(pipe, part):
            raise ValueError(f"from_pipeline expects a diffusers StableDiffusionPipeline with a "
                             f"{part!r} component; got {type(pipe).__name__}")
    device = torch.device(getattr(pipe, "_execution_device", None) or pipe.device)
    if model_id is None:
        model_id = getattr(pipe.config, "_name_or_path", None) or "pipeline"
    return EmerDiffModel(
        unet=pipe.unet, vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
        scheduler=ddpm_scheduler_from_config(pipe.scheduler.config), device=device,
        dtype=pipe.unet.dtype, default_config=EmerDiffConfig(), model_id=str(model_id),
        revision=revision, random_weights=False,
    )


def ddpm_scheduler_from_config(scheduler_config) -> object:
    """A ``DDIMScheduler`` (stepped with eta=1: DDPM) from any SD scheduler config.

    SD 1.4 ships a PNDM config whose 50-step timesteps repeat 961, and ``DDPMScheduler`` sets the
    last step's alpha-bar to 1 (variance ~0, the last noise map explodes); the DDIM scheduler with
    the config's own ``set_alpha_to_one`` has neither problem.
    """
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(dict(scheduler_config))


@functools.lru_cache(maxsize=4)
def _tiny_components_cpu(seed: int) -> dict:
    from .tiny import build_tiny_components

    return build_tiny_components(seed)


def _load_tiny(device: torch.device, dtype: torch.dtype, seed: int) -> EmerDiffModel:
    import copy

    parts = _tiny_components_cpu(seed)
    # Copies, so that moving one loaded tiny model to a device or dtype never moves another.
    unet, vae, text_encoder = (_moved(copy.deepcopy(parts[n]), device, dtype)
                               for n in ("unet", "vae", "text_encoder"))
    return EmerDiffModel(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=parts["tokenizer"],
        scheduler=ddpm_scheduler_from_config(parts["scheduler_config"]), device=device,
        dtype=dtype, default_config=EmerDiffConfig(num_masks=8), model_id=TINY_MODEL_ID,
        random_weights=True,
    )


def _moved(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    module = module.to(device)
    # diffusers warns on every dtype cast, even a no-op one: cast only when it changes something.
    return module if next(module.parameters()).dtype == dtype else module.to(dtype)
