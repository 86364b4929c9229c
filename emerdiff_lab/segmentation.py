"""EmerDiff end to end: one call from an image to an image-resolution segmentation, with
provenance. :func:`segment` is one request to a :class:`emerdiff_lab.session.Session`, which a
sweep over settings keeps and asks again."""

from __future__ import annotations

import json
import platform
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import EmerDiffConfig, check_blur_sigma
from .images import check_model_size
from .io import atomic_file, write_text
from .layers import check_image_size
from .models import EmerDiffModel

_ARRAYS = ("labels", "model_labels", "lowres_labels", "diff_maps", "mask_embeddings")


@dataclass(frozen=True)
class Intermediates:
    """What :func:`segment` computed on the way, kept when ``keep_intermediates=True`` (for
    figures and ablations that change one step and reuse the rest; never saved).

    Attributes:
        pixels: (3, S, S) float32 in [0, 1], the square the model saw.
        features: (h, w, C) low-resolution features (before k-means' normalisation).
        inversion: the :class:`~emerdiff_lab.inversion.Inversion` the maps were denoised from.
        raw_maps: (K, S, S) float32 pixel-change maps before blur and normalisation.
    """

    pixels: torch.Tensor
    features: torch.Tensor
    inversion: object
    raw_maps: torch.Tensor


@dataclass(frozen=True)
class Segmentation:
    """The result of :func:`segment`.

    Attributes:
        labels: (H, W) int64 in [0, num_masks): the segmentation at the input's original size
            (or at model resolution when ``segment(..., original_size=False)``).
        model_labels: (S, S) int64, the argmax at the model's input resolution.
        lowres_labels: (h, w) int64, the k-means masks.
        diff_maps: (K, S, S) float32, the blurred (and, if configured, normalised) pixel-change
            maps that the argmax used.
        mask_embeddings: (K, C) float32, the mean low-resolution feature of each mask.
        config: the ``EmerDiffConfig`` used.
        num_masks: masks found; fewer than ``config.num_masks`` when k-means had empty clusters
            (a uniform image), which ``notes`` then says.
        image_size: S, the model's input side in pixels.
        provenance: model id, revision, whether the weights are random, package versions.
        notes: human-readable remarks about this result.
        intermediates: :class:`Intermediates` when ``segment(..., keep_intermediates=True)``,
            else None; not written by :meth:`save`.
    """

    labels: torch.Tensor
    model_labels: torch.Tensor
    lowres_labels: torch.Tensor
    diff_maps: torch.Tensor
    mask_embeddings: torch.Tensor
    config: EmerDiffConfig
    num_masks: int
    image_size: int
    provenance: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    intermediates: Intermediates | None = field(default=None, repr=False, compare=False)

    @property
    def random_weights(self) -> bool:
        return bool(self.provenance.get("random_weights", False))

    def save(self, path: str | Path) -> Path:
        """Writes ``STEM.npz`` (arrays) and ``STEM.json`` (config and provenance) and returns
        the .npz path.

        ``path`` is the stem, dots included (``frame.001`` gives ``frame.001.npz``); a trailing
        ``.npz`` or ``.json`` is dropped (so ``save("x.npz.npz")`` writes ``x.npz.npz``). Each
        file goes through :func:`emerdiff_lab.io.atomic_file`, so a full disk or a kill never
        leaves a truncated result under the final name.
        """
        npz, meta_path = result_paths(path)
        npz.parent.mkdir(parents=True, exist_ok=True)
        meta = {"config": self.config.to_dict(), "num_masks": self.num_masks,
                "image_size": self.image_size, "provenance": self.provenance,
                "notes": list(self.notes)}
        arrays = {name: getattr(self, name).cpu().numpy() for name in _ARRAYS}
        with atomic_file(npz) as handle:
            np.savez_compressed(handle, **arrays)
        write_text(meta_path, json.dumps(meta, indent=2))
        return npz

    @classmethod
    def load(cls, path: str | Path) -> Segmentation:
        """Reads a result written by :meth:`save` (``path``: the stem, or either file).

        Raises:
            FileNotFoundError: either file is missing.
            ValueError: either file is corrupt or not a saved Segmentation; the message names it.
        """
        npz, meta_path = result_paths(path)
        if not npz.exists() or not meta_path.exists():
            raise FileNotFoundError(f"expected {npz} and {meta_path} written by "
                                    f"Segmentation.save")
        try:
            meta = json.loads(meta_path.read_text())
            config = EmerDiffConfig.from_dict(meta["config"])
            fields = {"num_masks": meta["num_masks"], "image_size": meta["image_size"],
                      "provenance": meta["provenance"], "notes": tuple(meta["notes"])}
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            raise ValueError(f"{meta_path} is corrupt or not written by Segmentation.save "
                             f"({type(error).__name__}: {error})") from error
        if not zipfile.is_zipfile(npz):  # np.load would guess "pickled data" and say so
            raise ValueError(f"{npz} is corrupt or not written by Segmentation.save (not a "
                             f".npz archive)")
        try:
            with np.load(npz, allow_pickle=False) as arrays:
                tensors = {name: torch.from_numpy(arrays[name]) for name in _ARRAYS}
        except (ValueError, KeyError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as error:
            raise ValueError(f"{npz} is corrupt or not written by Segmentation.save "
                             f"({type(error).__name__}: {error})") from error
        return cls(**tensors, config=config, **fields)


def result_paths(path: str | Path) -> tuple[Path, Path]:
    """The (.npz, .json) pair of a saved result: the whole stem is kept, dots included, and only
    a trailing .npz or .json is dropped (``Path.with_suffix`` would cut ``frame.001`` to
    ``frame``, so that every frame overwrote the last)."""
    path = Path(path)
    if path.suffix.lower() in (".npz", ".json"):
        path = path.with_suffix("")
    return path.with_name(path.name + ".npz"), path.with_name(path.name + ".json")


def segment(model: EmerDiffModel, image, cfg: EmerDiffConfig | None = None, *,
            image_size: int | None = None, original_size: bool = True, path: str = "batched",
            progress: bool = True, features: torch.Tensor | None = None, inversion=None,
            keep_intermediates: bool = False) -> Segmentation:
    """Unsupervised image-resolution segmentation of ``image`` with EmerDiff.

    Args:
        model: from :func:`emerdiff_lab.load_model` or :func:`emerdiff_lab.from_pipeline`.
        image: a path, PIL image, array or tensor (see :func:`emerdiff_lab.load_image`). The
            model sees it resized (shorter side ``image_size``) and centre-cropped to a square.
        cfg: hyperparameters; default ``model.default_config`` (the paper's values for SD).
        image_size: side of the square the model sees; a multiple of 64 for SD. None: the
            model's native size (``model.native_image_size``: 512 for SD 1.x).
        original_size: return ``labels`` at the input's size (the crop undone: pixels outside
            the crop take the nearest cropped pixel's label); False keeps model resolution.
        path: "batched" (fast) or "reference" (one mask and sign at a time; for checking).
        progress: show progress bars.
        features: precomputed (h, w, C) features of this image at ``cfg``'s feature layer and
            t_f (e.g. ``Intermediates.features`` of an earlier call): stage 1 then only runs
            k-means. The caller vouches that they belong to this image and settings.
        inversion: a precomputed inversion of this image (``invert(..., full_trajectory=True)``
            serves every t_m); skips the inversion. Same caveat.
        keep_intermediates: attach :class:`Intermediates` (features, inversion, raw maps) to
            the result, so that a caller can re-assemble with another blur or normalisation
            (:func:`emerdiff_lab.assemble`) without denoising again.
    """
    from .session import Session

    cfg = cfg or model.default_config
    image_size = check_segment_settings(model, cfg, image_size)
    session = Session(model, image, cfg=cfg, image_size=image_size, progress_bars=progress)
    session.provide(cfg, features=features, inversion=inversion)
    return session.segment(cfg, original_size=original_size, path=path,
                           keep_intermediates=keep_intermediates)


def check_segment_settings(model: EmerDiffModel, cfg: EmerDiffConfig,
                           image_size: int | None) -> int:
    """The image side S that :func:`segment` will use (``image_size`` or the model's native
    size), after checking, before any work, every setting that is wrong for every image: S for
    the model, ``cfg.blur_sigma`` for S, t_m on the schedule, both layer names, and K against
    the feature grid (a batch then fails once, as a settings error, not once per image).
    Raises ValueError saying what is expected."""
    from .features import layer_names
    from .inversion import start_timestep

    image_size = check_model_size(image_size or model.native_image_size, "image_size")
    check_image_size(model.unet, image_size, model.vae_scale_factor)
    check_blur_sigma(cfg.blur_sigma, image_size)
    start_timestep(model, cfg)  # ValueError naming the valid t_m when it is off the schedule
    feature_layer, _ = layer_names(model, cfg, image_size)  # ValueError for an unknown layer
    side = image_size // model.vae_scale_factor \
        // model.architecture.geometry(model).layer_downsample(feature_layer)
    if not 1 <= cfg.num_masks <= side * side:
        raise ValueError(f"num_masks (k) must be an integer in [1, {side * side}] for a "
                         f"{side}x{side} feature map (at {image_size} px), got "
                         f"{cfg.num_masks!r}")  # kmeans_masks' words, said before any image
    return image_size


def provenance(model: EmerDiffModel) -> dict:
    """Where a result came from: model id, revision, weights, dtype, device, package versions."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("emerdiff-lab", "torch", "diffusers", "transformers", "scikit-learn"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {"model_id": model.model_id, "revision": model.revision,
            "random_weights": model.random_weights, "dtype": str(model.dtype).replace("torch.", ""),
            "device": str(model.device), "python": platform.python_version(),
            "versions": versions}
