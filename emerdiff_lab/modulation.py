"""Stage 2: modulated denoising of a stored trajectory and the pixel-change maps it yields.

At t_m the modulation layer's attention output gets an offset c * M on one low-resolution region
M (c = +lambda or -lambda); denoising then runs to x_0 with the stored noise maps, attention
probabilities injected from the unmodulated pass. Decoding both signs and taking the per-pixel
RGB distance shows which pixels that region controls.

Two paths compute the same thing:
- batched (default): every region and sign of a chunk rides in one UNet call behind the
  unmodulated reference (element 0), whose attention probabilities the others reuse;
- reference: one region and one sign at a time, the reference pass run separately and its
  probabilities recorded and replayed. Plain and slow; kept to check the batched path.

Where many single regions are perturbed at one t_m (the explorer), :func:`record_reference`
records the unmodulated pass once and :func:`perturb` replays it, so each new region costs two
batch elements per UNet call instead of three.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .config import EmerDiffConfig
from .features import layer_names
from .inversion import (Inversion, ddpm_step, inversion_schedule, modulation_timestep,
                        reconstruct, unet_predict)
from .core import EmerDiffModel
from .finite import check_finite, overflow_cause, strength_cause
from .layers import is_joint_attention, is_single_stream_attention
from .processors import (INJECT_FROM_FIRST, INJECT_NONE, INJECT_RECORD, INJECT_REPLAY,
                         AttentionControl, installed_processors)

PATHS = ("batched", "reference")
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@dataclass(frozen=True)
class Perturbation:
    """The effect of modulating one low-resolution region.

    Attributes:
        plus, minus: (3, H, W) float32 in [0, 1], decoded after offsets +lambda and -lambda.
        diff: (H, W) float32, raw (unblurred) per-pixel L2 distance over RGB of minus and plus.
        reference: (3, H, W) float32 in [0, 1], the unmodulated reconstruction.
        region: (h, w) bool, the modulated region.
    """

    plus: torch.Tensor
    minus: torch.Tensor
    diff: torch.Tensor
    reference: torch.Tensor
    region: torch.Tensor


def region_grid_size(model: EmerDiffModel, inversion: Inversion,
                     cfg: EmerDiffConfig) -> tuple[int, int]:
    """(h, w) of the modulation layer's token grid, which every region must match."""
    _, modulation_layer = layer_names(model, cfg, inversion.image.shape[-1])
    stride = model.architecture.geometry(model).layer_downsample(modulation_layer)
    latent_h, latent_w = inversion.latents.shape[-2:]
    return latent_h // stride, latent_w // stride


@dataclass(frozen=True, eq=False)
class ReferencePass:
    """The unmodulated denoising from t_m, recorded once for every perturbation at that t_m.

    Attributes:
        inversion: the :class:`Inversion` it was recorded on; it is valid for that one only.
        timestep: t_m, the step the denoising starts at.
        injection: whether attention probabilities were recorded (``cfg.attention_injection``).
        probabilities: one dict per denoising step, {attention layer: (heads, queries, keys)
            probabilities of the reference}; empty dicts when ``injection`` is False.
        latent: (C, h, w) float32, the reference's final latent (the reconstruction).
    """

    inversion: Inversion
    timestep: int
    injection: bool
    probabilities: list = field(repr=False)
    latent: torch.Tensor = field(repr=False)

    @property
    def nbytes(self) -> int:
        """Memory the recorded probabilities hold, in bytes."""
        return sum(p.numel() * p.element_size()
                   for step in self.probabilities for p in step.values())


@torch.no_grad()
def record_reference(model: EmerDiffModel, inversion: Inversion,
                     cfg: EmerDiffConfig | None = None, *,
                     max_bytes: int | None = None) -> ReferencePass | None:
    """Runs the unmodulated denoising from ``cfg.modulation_timestep`` once and records what
    every perturbation at that t_m reuses: with attention injection, every attention layer's
    probabilities at every step; always, the final latent.

    The probabilities of every layer and step are held in memory (see
    :func:`reference_pass_nbytes`): about 0.1 GB for ToyWorld, but 0.5 GB per 4096-token layer
    and step for SD at 512 px. When that exceeds ``max_bytes`` nothing is run and None is
    returned (use :func:`perturb` without a reference then).
    """
    cfg = cfg or model.default_config
    if max_bytes is not None and reference_pass_nbytes(model, inversion, cfg) > max_bytes:
        return None
    timestep = modulation_timestep(model, inversion, cfg)
    start = inversion.index_of(timestep)
    injection = bool(cfg.attention_injection)
    check_recording_fits(model, reference_pass_nbytes(model, inversion, cfg), "record_reference")
    control = AttentionControl(injection=INJECT_RECORD if injection else INJECT_NONE)
    current, probabilities = inversion.latents[start:start + 1], []
    schedule = inversion_schedule(model, inversion)
    with installed_processors(model.unet, None if injection else [], control):
        for i in range(start, len(inversion.timesteps)):
            t = inversion.timesteps[i].item()
            prediction = unet_predict(model, current, torch.tensor([t]), inversion.condition)
            current = ddpm_step(model, prediction, t, current, inversion.noise[i:i + 1],
                                schedule)
            probabilities.append(control.recorded)
            control.recorded = {}
    return ReferencePass(inversion=inversion, timestep=timestep,
                         injection=injection, probabilities=probabilities, latent=current[0])


def reference_pass_nbytes(model: EmerDiffModel, inversion: Inversion,
                          cfg: EmerDiffConfig | None = None) -> int:
    """Bytes the probabilities of a :func:`record_reference` pass would hold, from the layers'
    token counts (nothing is run): sum over attention layers and steps of heads x queries x keys
    in the model's dtype; 0 without attention injection."""
    cfg = cfg or model.default_config
    if not cfg.attention_injection:
        return 0
    steps = len(inversion.timesteps) - inversion.index_of(modulation_timestep(model, inversion,
                                                                              cfg))
    latent_h, latent_w = inversion.latents.shape[-2:]
    prompt_tokens = inversion.prompt_embeds.shape[1]
    values = 0
    geometry = model.architecture.geometry(model)
    for key in model.unet.attn_processors:
        name = key.removesuffix(".processor")
        attn = model.unet.get_submodule(name)
        stride = geometry.layer_downsample(name)
        queries = (latent_h // stride) * (latent_w // stride)
        if is_joint_attention(attn) or is_single_stream_attention(attn):
            queries += prompt_tokens  # image and text tokens attend to image and text tokens
        keys = prompt_tokens if getattr(attn, "is_cross_attention", False) else queries
        values += attn.heads * queries * keys
    return values * steps * (torch.finfo(model.dtype).bits // 8)


@torch.no_grad()
def perturb(model: EmerDiffModel, inversion: Inversion, region, cfg: EmerDiffConfig | None = None,
            *, path: str = "batched", reference: ReferencePass | None = None) -> Perturbation:
    """Modulates one region with +lambda and -lambda and decodes both results.

    Args:
        region: (h, w) bool (or 0/1) tensor on the modulation layer's grid (16x16 for SD at 512).
        path: "batched" (both signs and the reference in one call) or "reference" (plain).
        reference: a :func:`record_reference` pass of this inversion at ``cfg``'s t_m and
            injection; when given, the two signs replay it (two batch elements per UNet call
            instead of three) and ``path`` is not used.
    """
    cfg = cfg or model.default_config
    regions = _check_regions(model, inversion, cfg, torch.as_tensor(region)[None])
    signs = torch.tensor([1.0, -1.0])
    if reference is not None:
        _check_reference(reference, inversion, cfg, modulation_timestep(model, inversion, cfg))
        _, modulation_layer = layer_names(model, cfg, inversion.image.shape[-1])
        latents = _denoise_replayed(model, inversion, _offsets(model, regions.repeat(2, 1, 1),
                                                               signs, cfg),
                                    modulation_layer, cfg, reference)
        reference_latent = reference.latent
    else:
        latents, reference_latent = _modulated_latents(model, inversion, regions.repeat(2, 1, 1),
                                                       signs, cfg, path=path, progress=False,
                                                       need_reference=True)
    check_finite(latents, "the modulated latents",
                 strength_cause(cfg.modulation_strength, model.dtype))
    plus, minus, image = check_finite(model.decode(torch.cat([latents, reference_latent[None]])),
                                      "the decoded images",
                                      overflow_cause(model.dtype, "the VAE decoder")).cpu()
    return Perturbation(plus=plus, minus=minus, diff=rgb_distance(plus, minus),
                        reference=image, region=regions[0].cpu())


@torch.no_grad()
def pixel_change_maps(model: EmerDiffModel, inversion: Inversion, lowres_labels: torch.Tensor,
                      cfg: EmerDiffConfig | None = None, *, path: str = "batched",
                      progress: bool = True) -> torch.Tensor:
    """Raw pixel-change map of every low-resolution mask.

    Args:
        lowres_labels: (h, w) int64 in [0, K) from :func:`emerdiff_lab.kmeans_masks`.
        path: "batched" (all masks and signs batched, ``cfg.batch_size`` per UNet call) or
            "reference" (one mask, one sign at a time).

    Returns:
        (K, H, W) float32 on the CPU: for mask i, ||I_minus - I_plus||_2 over RGB per pixel.
    """
    cfg = cfg or model.default_config
    if not isinstance(lowres_labels, torch.Tensor) or lowres_labels.ndim != 2 \
            or lowres_labels.dtype not in (torch.int64, torch.int32):
        raise ValueError("lowres_labels must be an (h, w) integer tensor of mask ids")
    num_masks = int(lowres_labels.max()) + 1
    masks = torch.stack([lowres_labels == i for i in range(num_masks)])
    regions = _check_regions(model, inversion, cfg, masks)
    regions = regions.repeat_interleave(2, dim=0)                 # (2K, h, w): i+, i-, ...
    signs = torch.tensor([1.0, -1.0]).repeat(num_masks)
    latents, _ = _modulated_latents(model, inversion, regions, signs, cfg, path=path,
                                    progress=progress)
    check_finite(latents, "the modulated latents",
                 strength_cause(cfg.modulation_strength, model.dtype))
    return check_finite(_decode_pair_distances(model, latents, cfg.decode_batch_size),
                        "the difference maps", "a bug: finite images gave non-finite distances")


def rgb_distance(plus: torch.Tensor, minus: torch.Tensor) -> torch.Tensor:
    """Per-pixel L2 distance over RGB: (..., 3, H, W) x2 -> (..., H, W)."""
    return (minus - plus).pow(2).sum(dim=-3).sqrt()


def _decode_pair_distances(model: EmerDiffModel, latents: torch.Tensor,
                           decode_batch_size: int | None) -> torch.Tensor:
    """Latents (2K, C, h, w) ordered (+, -) per mask -> (K, H, W) distances, decoded in chunks."""
    pairs_per_chunk = max(1, (decode_batch_size or 8) // 2)
    maps = []
    for start in range(0, latents.shape[0], 2 * pairs_per_chunk):
        images = check_finite(model.decode(latents[start:start + 2 * pairs_per_chunk]),
                              "the decoded images", overflow_cause(model.dtype, "the VAE decoder"))
        maps.append(rgb_distance(images[0::2], images[1::2]).cpu())
    return torch.cat(maps)


def _check_regions(model, inversion, cfg, regions: torch.Tensor) -> torch.Tensor:
    expected = region_grid_size(model, inversion, cfg)
    if regions.ndim != 3 or tuple(regions.shape[1:]) != expected:
        raise ValueError(f"region must be an (h, w) = {expected} mask on the modulation layer's "
                         f"grid, got shape {tuple(regions.shape[1:])}")
    if regions.dtype != torch.bool:
        if not ((regions == 0) | (regions == 1)).all():
            raise ValueError("region must be boolean or hold only 0 and 1")
        regions = regions.bool()
    return regions


def _modulated_latents(model, inversion, regions, signs, cfg, *, path, progress,
                       need_reference=False):
    """Final latents (N, C, h, w) of N modulated denoisings, and the reference's (C, h, w).

    The batched path gets the reference for free (element 0); the reference path denoises it
    separately, only when ``need_reference`` (else it returns None for it).
    """
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    _, modulation_layer = layer_names(model, cfg, inversion.image.shape[-1])
    start = inversion.index_of(modulation_timestep(model, inversion, cfg))
    offsets = _offsets(model, regions, signs, cfg)
    if path == "reference":
        results = [_denoise_plain(model, inversion, offsets[i:i + 1], modulation_layer, start, cfg)
                   for i in tqdm(range(len(offsets)), desc="modulated denoising (reference)",
                                 disable=not progress, leave=False)]
        reference = _reconstruction_latent(model, inversion, start) if need_reference else None
        return torch.cat(results), reference
    return _denoise_in_chunks(model, inversion, offsets, modulation_layer, start, cfg, progress)


def _offsets(model, regions, signs, cfg):
    """c * M per element, flattened row-major like the layer's tokens: (N, tokens, 1)."""
    offsets = signs.view(-1, 1, 1) * cfg.modulation_strength * regions.float().cpu()
    return offsets.reshape(len(signs), -1, 1).to(model.device)


def _check_reference(reference: ReferencePass, inversion: Inversion, cfg: EmerDiffConfig,
                     timestep):
    if reference.inversion is not inversion:
        raise ValueError("this ReferencePass was recorded on another Inversion; record one with "
                         "record_reference(model, inversion, cfg) for this inversion")
    if (reference.timestep, reference.injection) != (timestep, bool(cfg.attention_injection)):
        raise ValueError(f"the ReferencePass was recorded at t_m={reference.timestep}, "
                         f"attention_injection={reference.injection}, but the config asks for "
                         f"t_m={cfg.modulation_timestep}, "
                         f"attention_injection={cfg.attention_injection}")


def _denoise_in_chunks(model, inversion, offsets, modulation_layer, start, cfg, progress):
    per_call = cfg.batch_size or auto_batch_size(model, inversion, len(offsets))
    while True:
        try:
            chunk = max(1, per_call - 1)  # one slot of every call is the reference
            outputs, reference = [], None
            for i in tqdm(range(0, len(offsets), chunk), desc="modulated denoising",
                          disable=not progress, leave=False):
                latents = _denoise_batched(model, inversion, offsets[i:i + chunk],
                                           modulation_layer, start, cfg)
                reference = latents[0]
                outputs.append(latents[1:])
            return torch.cat(outputs), reference
        except _OUT_OF_MEMORY:
            if cfg.batch_size is not None or per_call <= 2:
                raise
            per_call = max(2, per_call // 2)
            if model.device.type == "cuda":
                torch.cuda.empty_cache()


def _denoise_batched(model, inversion, offsets, modulation_layer, start, cfg):
    """Denoises the reference plus len(offsets) modulated copies in one batch per step.

    Returns latents (1 + n, C, h, w): element 0 is the unmodulated reference.
    """
    offsets = torch.cat([torch.zeros_like(offsets[:1]), offsets])
    injection = INJECT_FROM_FIRST if cfg.attention_injection else INJECT_NONE
    return _denoise_modulated(model, inversion, offsets, modulation_layer, start, cfg, injection)


def _denoise_replayed(model, inversion, offsets, modulation_layer, cfg, reference):
    """Denoises len(offsets) modulated copies, replaying the recorded reference pass:
    (n, C, h, w)."""
    injection = INJECT_REPLAY if reference.injection else INJECT_NONE
    return _denoise_modulated(model, inversion, offsets, modulation_layer,
                              inversion.index_of(reference.timestep), cfg, injection,
                              reference.probabilities)


def _denoise_modulated(model, inversion, offsets, modulation_layer, start, cfg, injection,
                       recorded=None):
    """Denoises len(offsets) copies of the stored latent at step ``start``, each given its
    offset (tokens, 1) at that step only, in one batch per step: (n, C, h, w).

    ``injection`` is a processor mode; ``recorded`` holds, per step, the probabilities that
    ``INJECT_REPLAY`` applies. Without injection only the modulated layer's processor changes.
    """
    batch = offsets.shape[0]
    control = AttentionControl(offset_placement=cfg.offset_placement, injection=injection)
    layers = [modulation_layer] if injection == INJECT_NONE else None
    current = inversion.latents[start:start + 1].expand(batch, -1, -1, -1)
    schedule = inversion_schedule(model, inversion)
    with installed_processors(model.unet, layers, control):
        for step, i in enumerate(range(start, len(inversion.timesteps))):
            t = inversion.timesteps[i].item()
            if recorded is not None:
                control.recorded = recorded[step]
            control.offsets = {modulation_layer: offsets} if i == start else {}
            prediction = unet_predict(model, current, torch.full((batch,), t),
                                      inversion.condition)
            current = ddpm_step(model, prediction, t, current,
                                inversion.noise[i:i + 1].expand(batch, -1, -1, -1),
                                schedule)
    return current


def _denoise_plain(model, inversion, offset, modulation_layer, start, cfg):
    """One modulated denoising, the reference pass run beside it call by call: (1, C, h, w)."""
    control = AttentionControl(offset_placement=cfg.offset_placement)
    layers = None if cfg.attention_injection else [modulation_layer]
    reference = inversion.latents[start:start + 1]
    modulated = reference
    schedule = inversion_schedule(model, inversion)
    if cfg.attention_injection:  # one step's probabilities of every layer are held at once
        steps = len(inversion.timesteps) - start
        check_recording_fits(model, reference_pass_nbytes(model, inversion, cfg) // steps,
                             "the reference path")
    with installed_processors(model.unet, layers, control):
        for i in range(start, len(inversion.timesteps)):
            step_t = inversion.timesteps[i].item()
            t = torch.tensor([step_t])
            noise = inversion.noise[i:i + 1]
            if cfg.attention_injection:
                control.offsets, control.injection = {}, INJECT_RECORD
                prediction = unet_predict(model, reference, t, inversion.condition)
                reference = ddpm_step(model, prediction, step_t, reference, noise,
                                      schedule)
                control.injection = INJECT_REPLAY
            control.offsets = {modulation_layer: offset} if i == start else {}
            prediction = unet_predict(model, modulated, t, inversion.condition)
            modulated = ddpm_step(model, prediction, step_t, modulated, noise,
                                  schedule)
            control.recorded = {}
    return modulated


def _reconstruction_latent(model, inversion, start):
    return reconstruct(model, inversion, inversion.timesteps[start].item())[-1]


def available_bytes(device: torch.device) -> int:
    """Memory free for new tensors on ``device`` in bytes: CUDA's free memory, else the
    machine's available RAM (0 where it cannot be read: nothing is refused then)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import os

        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        return 0


def check_recording_fits(model: EmerDiffModel, nbytes: int, what: str) -> None:
    """MemoryError, with the estimate, when recorded attention probabilities of ``nbytes``
    would take more than 80% of :func:`available_bytes` (SD3.5-medium: 2.6 GiB per step at
    512 px, 31 GiB at 1024 px in bfloat16); use the batched path, which holds one layer's."""
    available = available_bytes(model.device)
    if available and nbytes > 0.8 * available:
        raise MemoryError(f"{what} would record {nbytes / 2**30:.2f} GiB of attention "
                          f"probabilities, more than fits in the {available / 2**30:.1f} GiB free "
                          f"on {model.device}; use path='batched' without a recorded reference "
                          f"(it holds one layer's probabilities at a time), a smaller image, or "
                          f"attention_injection=False")


def auto_batch_size(model: EmerDiffModel, inversion: Inversion, num_elements: int) -> int:
    """Elements per modulated-denoising UNet call (reference included), from free memory.

    A rough estimate of activation memory per element (the architecture's layer geometry:
    scaled from a UNet's widest full-resolution layer, or a transformer block's hidden states
    and attention probabilities) against 60% of free CUDA memory; 16 elsewhere. An
    out-of-memory error halves it and retries, so the estimate only has to be in the right
    range.
    """
    wanted = num_elements + 1
    if model.device.type != "cuda":
        return max(2, min(wanted, 16))
    free, _ = torch.cuda.mem_get_info(model.device)
    bytes_per_value = torch.finfo(model.dtype).bits // 8
    per_element = model.architecture.geometry(model).activation_bytes(
        *inversion.latents.shape[-2:], bytes_per_value)
    return max(2, min(wanted, int(0.6 * free) // per_element))
