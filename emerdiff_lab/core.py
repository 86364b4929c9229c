"""The model object every EmerDiff function takes, device and dtype helpers, the scheduler
factory, and the two small registries (named offline models, architectures).

This module imports nothing from the package but the leaf :mod:`emerdiff_lab.config`, so that
any module (the loaders of ``"tiny"`` or ``"toyworld"``, the architecture layer) can import it
without a cycle. Named models and architectures register themselves here; :func:`load_model`
and :class:`EmerDiffModel` look them up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .config import EmerDiffConfig

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
}

# name -> loader(device, dtype, seed) -> EmerDiffModel; filled by register_model.
_NAMED_MODELS: dict[str, Callable] = {}
# Architecture objects in the order they are tried; filled by register_architecture.
_ARCHITECTURES: list = []


def register_model(name: str, loader: Callable, *, aliases: tuple[str, ...] = ()) -> None:
    """Makes ``load_model(name)`` (and each alias) call ``loader(device, dtype, seed)``.

    ``device`` and ``dtype`` arrive resolved (torch objects); ``seed`` is the weight seed of a
    random-weight model (loaders of trained weights ignore it).
    """
    for key in (name, *aliases):
        _NAMED_MODELS[key] = loader


def named_model_loader(name: str) -> Callable | None:
    """The loader registered under ``name``, or None."""
    return _NAMED_MODELS.get(name)


def named_models() -> list[str]:
    """Every registered name (aliases included), sorted."""
    return sorted(_NAMED_MODELS)


def register_architecture(architecture, *, first: bool = False) -> None:
    """Adds an architecture to those :class:`EmerDiffModel` detects from its components.

    Architectures are tried in order and the first whose ``matches(model)`` is true wins; a
    specific one (SDXL) must come before a general one (SD 1.x/2.x): pass ``first=True``.
    """
    if first:
        _ARCHITECTURES.insert(0, architecture)
    else:
        _ARCHITECTURES.append(architecture)


def detect_architecture(model: EmerDiffModel):
    """The first registered architecture that matches ``model``'s components.

    Raises:
        ValueError: none matches (the message names the known ones).
    """
    for architecture in _ARCHITECTURES:
        if architecture.matches(model):
            return architecture
    names = [a.name for a in _ARCHITECTURES] or ["none registered: import emerdiff_lab"]
    raise ValueError(f"no known architecture matches this model (UNet "
                     f"{type(model.unet).__name__}, text encoder "
                     f"{type(model.text_encoder).__name__}); known: {names}")


@dataclass(eq=False)
class EmerDiffModel:
    """A latent (or pixel-space) diffusion model ready for EmerDiff.

    Attributes:
        unet: the denoiser: a ``UNet2DConditionModel``, or a diffusion transformer
            (PixArt's ``PixArtTransformer2DModel``) under the same field name.
        vae: the ``AutoencoderKL``, or None for a pixel-space model (images are their own latents).
        text_encoder, tokenizer: the (first) CLIP text encoder and its tokenizer (PixArt: T5).
        scheduler: a ``DDIMScheduler`` built from the model's own scheduler config. Stepped with
            ``eta=1`` it is the DDPM sampler with SD's end condition (``set_alpha_to_one=False``).
            Only its configuration and alpha-bars are read (see :mod:`emerdiff_lab.schedule`).
        device, dtype: where and in which precision the networks run. Scheduler arithmetic and
            stored latents stay in float32.
        default_config: the ``EmerDiffConfig`` that suits this model (the paper's values for SD).
        model_id: where the weights came from ("tiny", a hub id or a folder).
        revision: the hub revision asked for, if any.
        random_weights: True when the weights are random (their output shows mechanics only).
        text_encoder_2, tokenizer_2: SDXL's (or SD3's) second text encoder (with projection)
            and tokenizer; None for one-encoder models.
        text_encoder_3, tokenizer_3: SD3's T5 encoder and tokenizer (optional there); None
            elsewhere.
        architecture: the :mod:`emerdiff_lab.architectures` object that says how to encode
            prompts, call the UNet, run the VAE and which layers to use. None: detected from the
            components.
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
    text_encoder_2: torch.nn.Module | None = None
    tokenizer_2: object = None
    architecture: object = None
    text_encoder_3: torch.nn.Module | None = None
    tokenizer_3: object = None
    # Things derived from the components on first use (e.g. SDXL's float32 VAE copy).
    _derived: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.architecture is None:
            self.architecture = detect_architecture(self)

    @property
    def vae_scale_factor(self) -> int:
        """Pixels per latent cell along one side (8 for SD, 1 for a pixel-space model)."""
        if self.vae is None:
            return 1
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_image_size(self) -> int:
        """The image side the model was trained at: 512 for SD 1.x, 768 for SD 2.x-768,
        1024 for SDXL and PixArt-XL-2-1024, 256 for the tiny model, 64 for ToyWorld and
        tiny-pixart, 1024 for FLUX.1 (the architecture says: FLUX's config has no
        ``sample_size``)."""
        return self.architecture.native_image_size(self)

    @property
    def prediction_type(self) -> str:
        # flow-matching schedulers have no prediction_type: their models predict the velocity
        return getattr(self.scheduler.config, "prediction_type", "flow")

    @torch.no_grad()
    def condition(self, prompt: str):
        """Everything a UNet call is conditioned on for ``prompt`` (an architectures.Condition:
        token embeddings (1, tokens, width) plus, e.g. for SDXL, the pooled embedding); cached."""
        if prompt not in self._prompt_cache:
            self._prompt_cache[prompt] = self.architecture.encode_prompt(self, prompt)
        return self._prompt_cache[prompt]

    def prompt_embeds(self, prompt: str) -> torch.Tensor:
        """Text embeddings of one prompt, (1, tokens, width), in the model's dtype; cached."""
        return self.condition(prompt).embeds

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [0, 1] -> latents (B, C, H/f, W/f) float32, scaled for the UNet.

        Uses the mean of the VAE posterior, so that encoding is deterministic.
        """
        return self.architecture.encode_images(self, images)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, C, h, w) -> images (B, 3, H, W) float32 clamped to [0, 1]."""
        return self.architecture.decode_latents(self, latents)


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


def ddpm_scheduler_from_config(scheduler_config) -> object:
    """A ``DDIMScheduler`` (stepped with eta=1: DDPM) from any SD-family scheduler config.

    SD 1.4 ships a PNDM config whose 50-step timesteps repeat 961, and ``DDPMScheduler`` sets the
    last step's alpha-bar to 1 (variance ~0, the last noise map explodes); the DDIM scheduler with
    SD's end condition has neither problem. Configs that do not say (SDXL ships an Euler config
    without ``set_alpha_to_one`` and ``clip_sample``) get SD's values, not DDIM's defaults (which
    would zero the last step's variance and clamp latents to [-1, 1]).
    """
    from diffusers import DDIMScheduler

    config = dict(scheduler_config)
    config.setdefault("set_alpha_to_one", False)
    config.setdefault("clip_sample", False)
    return DDIMScheduler.from_config(config)


def moved(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``module`` on ``device`` in ``dtype`` (in place, as ``Module.to``)."""
    module = module.to(device)
    if next(module.parameters()).dtype == dtype:
        return module
    if getattr(module, "_keep_in_fp32_modules", None):
        return module.to(dtype)  # diffusers' own cast, and its warning, which then applies
    # diffusers' ModelMixin.to warns on every dtype cast ("There are modules in ... that should
    # be kept in float32: []"), even with no such module; the plain torch cast is the same cast.
    return torch.nn.Module.to(module, dtype)
