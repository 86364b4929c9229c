"""The frozen configuration of one EmerDiff run: every hyperparameter of the method in one place.

Defaults are the paper's values (Namekata et al., ICLR 2024) where the paper states them; the
fields marked "our choice" are not stated in the paper (see docs/method.md) and are exposed so that
they can be ablated.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

OFFSET_PLACEMENTS = ("after_projection", "before_projection")
FEATURE_NORMALIZATIONS = ("l2", "none")
FLOW_ONLY_FIELDS = ("modulation_sigma", "feature_sigma")
# numpy's and scikit-learn's random states take 32-bit seeds (torch would take 64-bit ones).
MAX_SEED = 2**32 - 1


@dataclass(frozen=True)
class EmerDiffConfig:
    """Hyperparameters of EmerDiff. Frozen: derive variants with ``cfg.replace(field=value)``.

    Attributes:
        num_masks: K, the number of k-means clusters of the low-resolution features. The paper
            varies 10-40 and finds little difference; 30 is our choice.
        feature_timestep: t_f, the diffusion timestep at which features are read (paper: 1).
        modulation_timestep: t_m, the timestep at which the feature map is modulated (paper: 281).
            Must lie on the ``num_inference_steps`` schedule (981, 961, ..., 21, 1 for 50 steps).
        modulation_strength: lambda, the size of the offset added to the masked region (paper: 10).
        num_inference_steps: length of the DDPM schedule used for inversion and denoising (50).
        feature_layer: diffusers module path of the layer whose ``to_q`` output is the feature,
            or None to resolve it by structure (first cross-attention of the lowest-resolution
            up block with cross-attention; see :func:`emerdiff_lab.resolve_layers`).
        modulation_layer: module path of the modulated cross-attention layer, or None for the
            third cross-attention of that block (our choice among the paper's three).
        offset_placement: "after_projection" adds c*M after ``to_out`` (the paper's main
            setting); "before_projection" adds it before (the paper's Figure 14 alternative).
        attention_injection: replace the attention probabilities of every attention layer of the
            modulated passes with those of the unmodulated pass at the same step (paper: on).
        blur_sigma: standard deviation, in pixels of the model's input resolution, of the Gaussian
            that smooths each difference map before the argmax (our choice: 4.0; 0 disables).
        normalize_maps: divide every difference map by its own maximum before the argmax (our
            option for the ablations; off by default, as in the paper).
        feature_normalization: "l2" normalises each feature vector before k-means (our choice),
            "none" clusters the raw query vectors.
        prompt: text condition of every UNet call (paper: the empty prompt, no guidance).
        seed: seeds the inversion noise, the feature-timestep noise and k-means.
        batch_size: number of elements of one modulated-denoising UNet call, the unmodulated
            reference included (so at least 2). None chooses it from free memory.
        decode_batch_size: number of latents decoded by the VAE at once. None: automatic.
        modulation_sigma: flow-matching models only (SD3): the noise level sigma in (0, 1) to
            modulate at, snapped to the nearest step of the schedule. None: t_m mapped by equal
            signal-to-noise ratio (281 -> 0.438; SD3 at 50 steps snaps to 0.4384).
        feature_sigma: flow-matching models only: sigma of the feature pass. None: t_f mapped
            by equal SNR (1 -> 0.040).
    """

    num_masks: int = 30
    feature_timestep: int = 1
    modulation_timestep: int = 281
    modulation_strength: float = 10.0
    num_inference_steps: int = 50
    feature_layer: str | None = None
    modulation_layer: str | None = None
    offset_placement: str = "after_projection"
    attention_injection: bool = True
    blur_sigma: float = 4.0
    normalize_maps: bool = False
    feature_normalization: str = "l2"
    prompt: str = ""
    seed: int = 0
    batch_size: int | None = None
    decode_batch_size: int | None = None
    modulation_sigma: float | None = None
    feature_sigma: float | None = None

    def __post_init__(self) -> None:
        _require_int("num_masks", self.num_masks, minimum=1)
        _require_int("feature_timestep", self.feature_timestep, minimum=0)
        _require_int("modulation_timestep", self.modulation_timestep, minimum=0)
        _require_int("num_inference_steps", self.num_inference_steps, minimum=1)
        _require_int("seed", self.seed, minimum=0, maximum=MAX_SEED,
                     why="numpy and scikit-learn take 32-bit seeds")
        if self.batch_size is not None:
            _require_int("batch_size", self.batch_size, minimum=2,
                         why="it counts the unmodulated reference too")
        if self.decode_batch_size is not None:
            _require_int("decode_batch_size", self.decode_batch_size, minimum=1)
        # NaN or inf would not fail: they silently label every pixel 0 (strength) or overflow
        # only after all the computation (sigma).
        if not _is_finite_number(self.modulation_strength):
            raise ValueError(f"modulation_strength must be a finite number (lambda), got "
                             f"{self.modulation_strength!r}")
        if not _is_finite_number(self.blur_sigma) or self.blur_sigma < 0:
            raise ValueError(f"blur_sigma must be a finite number >= 0 (pixels), got "
                             f"{self.blur_sigma!r}")
        for name in ("modulation_sigma", "feature_sigma"):
            value = getattr(self, name)
            if value is not None and (not _is_finite_number(value) or not 0 < value < 1):
                raise ValueError(f"{name} must be None or a noise level sigma in (0, 1) (flow "
                                 f"models), got {value!r}")
        if self.offset_placement not in OFFSET_PLACEMENTS:
            raise ValueError(f"offset_placement must be one of {OFFSET_PLACEMENTS}, got "
                             f"{self.offset_placement!r}")
        if self.feature_normalization not in FEATURE_NORMALIZATIONS:
            raise ValueError(f"feature_normalization must be one of {FEATURE_NORMALIZATIONS}, got "
                             f"{self.feature_normalization!r}")
        if not isinstance(self.prompt, str):
            raise ValueError(f"prompt must be a string, got {type(self.prompt).__name__}")
        for name in ("feature_layer", "modulation_layer"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be None or a module path such as "
                                 f"'up_blocks.1.attentions.0.transformer_blocks.0.attn2', "
                                 f"got {value!r}")

    def replace(self, **changes) -> EmerDiffConfig:
        """A copy with some fields changed (validated like the original)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ValueError(f"unknown EmerDiffConfig field(s): {sorted(unknown)}; "
                             f"fields are {[f.name for f in dataclasses.fields(self)]}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Every field; the flow-only sigmas only when set, so that the dict of every other
        config, and the caches and resumable runs keyed by it, stay as they were."""
        values = dataclasses.asdict(self)
        for name in FLOW_ONLY_FIELDS:
            if values[name] is None:
                del values[name]
        return values

    @classmethod
    def from_dict(cls, values: dict) -> EmerDiffConfig:
        return cls().replace(**values)


# Which settings each stage of the method reads: the keys of emerdiff_lab.session.Session's
# caches, and the one place that says so. Layer names are resolved (None -> the model's default
# layer) before they become keys. The inversion reads t_m only as its depth: one trajectory to the
# deepest t_m asked serves every smaller one. "labels" also reads the output size, and "one region"
# the region itself (neither is a config field).
_FEATURES = ("feature_layer", "feature_timestep", "feature_sigma", "prompt", "seed")
_MASKS = _FEATURES + ("num_masks", "feature_normalization")
_INVERSION = ("num_inference_steps", "prompt", "seed")
_MODULATION = ("modulation_timestep", "modulation_sigma", "modulation_strength",
               "modulation_layer",
               "offset_placement", "attention_injection")
STAGE_SETTINGS: dict[str, tuple[str, ...]] = {
    "features": _FEATURES,
    "masks": _MASKS,
    "inversion": _INVERSION,
    "reference_pass": _INVERSION + ("modulation_timestep", "modulation_sigma",
                                    "attention_injection"),
    "raw_maps": tuple(dict.fromkeys(_MASKS + _INVERSION)) + _MODULATION,
    "labels": tuple(dict.fromkeys(_MASKS + _INVERSION)) + _MODULATION
    + ("blur_sigma", "normalize_maps"),
    "one_region": _INVERSION + _MODULATION,
}
# Settings that change how the work is batched (and so the float rounding), never what is
# computed: never part of a cache key.
NUMERICS_ONLY = ("batch_size", "decode_batch_size")


def stage_key(stage: str, cfg: EmerDiffConfig) -> tuple:
    """``((setting, value), ...)`` of the settings ``stage`` reads (:data:`STAGE_SETTINGS`), in
    the table's order. Layers are taken as they are in ``cfg``: resolve them first
    (:meth:`emerdiff_lab.session.Session.resolved`)."""
    if stage not in STAGE_SETTINGS:
        raise ValueError(f"stage must be one of {sorted(STAGE_SETTINGS)}, got {stage!r}")
    # the flow-only sigmas only when set: every other config keeps its keys (and its store)
    return tuple((name, getattr(cfg, name)) for name in STAGE_SETTINGS[stage]
                 if name not in FLOW_ONLY_FIELDS or getattr(cfg, name) is not None)


def check_blur_sigma(blur_sigma: float, image_size: int) -> None:
    """Raises ValueError unless ``blur_sigma`` (pixels) is at most ``image_size``: a wider
    Gaussian flattens every difference map, so the argmax would say nothing."""
    if blur_sigma > image_size:
        raise ValueError(f"blur_sigma {blur_sigma:g} px is larger than the {image_size} px image "
                         f"the model sees; use at most {image_size} (paper-like: a few pixels, "
                         f"default 4)")


def _is_finite_number(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _require_int(name: str, value, *, minimum: int, maximum: int | None = None,
                 why: str = "") -> None:
    reason = f" ({why})" if why else ""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{reason}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be an integer <= {maximum}{reason}, got {value!r}")
