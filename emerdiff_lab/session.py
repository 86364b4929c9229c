"""One image, one model, many settings: every stage of EmerDiff computed once per the settings it
reads, and reused by every later setting that does not change them.

    session = Session(model, image, labels=None)          # labels: (H, W) class ids, optional
    for cfg in configs:                                    # any sweep is a loop over configs
        seg = session.segment(cfg)                         # == segment(model, image, cfg)

Stage keys: :data:`emerdiff_lab.config.STAGE_SETTINGS` (layers resolved first; ``batch_size``
and ``decode_batch_size`` never keys). One inversion per (steps, prompt, seed) serves every t_m up
to the deepest asked so far; a deeper t_m inverts again, to that depth, dropping the reference
passes recorded on the old trajectory. Batched, plain ("reference") and replayed single-region
paths have separate entries.

API (every ``cfg`` defaults to the session's ``cfg``, itself ``model.default_config``):

- ``resolved(cfg)``: ``cfg`` with both layer names filled in.
- ``latent()``, ``features(cfg)`` (h, w, C), ``masks(cfg)`` (h, w) int64, ``inversion(cfg,
  depth=None)``, ``reference_pass(cfg)`` (or None when it would not fit in half the memory cap),
  ``raw_maps(cfg, path="batched")`` (K, S, S) float32 CPU, ``labels(cfg, path="batched")``
  (S, S) int64, ``segment(cfg, original_size=True, path="batched", keep_intermediates=False)``
  (a :class:`~emerdiff_lab.Segmentation`, the same as :func:`emerdiff_lab.segment`'s),
  ``perturbation(region, cfg, path="replayed")`` (one region; "replayed" replays the recorded
  reference pass when it fits, else runs "batched").
- ``region_grid(cfg)``, ``cell_region(row, col, cfg)``, ``mask_region(index, cfg)``,
  ``timesteps(cfg)`` (valid t_m, ascending), ``candidate_layers()`` (the semantic block's
  cross-attention layers), ``miou(labels)`` (against the session's labels, or None).
- ``is_cached(stage, cfg, path=..., region=None)``, ``cache_info()``, ``clear()``,
  ``check_model(model)``.
- ``on_progress``: None or ``callback(done, total)``, called after every denoiser call of a
  request (features, inversion, reference pass and modulated denoising steps; a batched call
  counts once); ``total`` is planned when the request starts, and the last call has
  ``done == total``.

Memory: trajectories, features, maps, reference passes and single-region results are counted
(``cache_info()["bytes"]``) against ``max_bytes``; least recently used entries go first (the
entry just made always stays). ``store``: a folder where raw maps (and their masks) are also
kept on disk, keyed by stage key, weights fingerprint, dtype, device, image size and pixels, so
that separate processes (the figure notebooks) share them.

Threads: every request holds the session's lock, so one worker thread may compute while the
main thread draws; ``cache_info`` and ``is_cached`` take only a short lock on the cache table.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from . import features as _features
from . import inversion as _inversion
from . import modulation as _modulation
from .assembly import prepare_maps
from .config import EmerDiffConfig, stage_key
from .evaluation.datasets import label_to_model
from .images import check_model_size, labels_to_original, prepare_image
from .layers import check_image_size
from .map_store import MapStore
from .segmentation import Intermediates, Segmentation, check_segment_settings, provenance

DEFAULT_MAX_BYTES = 2 * 2**30
MAP_PATHS = ("batched", "reference")
REGION_PATHS = ("replayed",) + MAP_PATHS
_NOT_RECORDED = "not recorded"  # a reference pass that would not fit: remembered as such


class Session:
    """See the module docstring. ``image``: anything :func:`emerdiff_lab.load_image` takes,
    brought to ``image_size`` (default the model's native size); ``labels``: optional (H, W)
    class ids (255 = ignore), brought to the model's pixels the same way."""

    def __init__(self, model, image, labels=None, *, cfg: EmerDiffConfig | None = None,
                 image_size: int | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 store: str | Path | None = None, weights: str | None = None,
                 on_progress=None, progress_bars: bool = False):
        self.model = model
        self.cfg = cfg or model.default_config
        self.image_size = check_model_size(image_size or model.native_image_size, "image_size")
        check_image_size(model.unet, self.image_size, model.vae_scale_factor)
        self.prepared = prepare_image(image, self.image_size)
        self.pixels = self.prepared.pixels
        self.truth = None if labels is None else torch.from_numpy(label_to_model(
            np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64), self.image_size))
        self.max_bytes = int(max_bytes)
        self.store = None if store is None else MapStore(store)
        self._weights = weights
        self.on_progress = on_progress
        self.progress_bars = progress_bars
        self._bound = (model.dtype, model.device)
        self._entries: OrderedDict[tuple, tuple[object, int]] = OrderedDict()
        self._table = threading.Lock()      # the cache table and counters
        self._work = threading.RLock()      # one request at a time
        self._calls: list | None = None     # [done, total] while a request reports progress
        self.hits = self.misses = 0
        self.computed: dict[str, int] = {}

    # ------------------------------------------------------------------------------ binding
    def check_model(self, model) -> None:
        """ValueError unless ``model`` is the session's model, still on its dtype and device."""
        if model is not self.model:
            raise ValueError("this Session is bound to another model object; make a Session "
                             "for this model")
        self._check_bound()

    def _check_bound(self) -> None:
        now = (self.model.dtype, self.model.device)
        if now != self._bound:
            raise ValueError(f"the session's model moved from {self._bound[0]} on "
                             f"{self._bound[1]} to {now[0]} on {now[1]} after the session was "
                             f"made; make a new Session (cached results belong to the old one)")

    # ---------------------------------------------------------------------------- settings
    def resolved(self, cfg: EmerDiffConfig | None = None) -> EmerDiffConfig:
        """``cfg`` with ``feature_layer`` and ``modulation_layer`` named (None -> default)."""
        cfg = cfg or self.cfg
        feature, modulation = _features.layer_names(self.model, cfg, self.image_size)
        if (cfg.feature_layer, cfg.modulation_layer) == (feature, modulation):
            return cfg
        return cfg.replace(feature_layer=feature, modulation_layer=modulation)

    def timesteps(self, cfg: EmerDiffConfig | None = None) -> list[int]:
        """The t_m values of ``cfg``'s schedule, ascending."""
        steps = (cfg or self.cfg).num_inference_steps
        return sorted(_inversion.schedule(self.model, steps).tolist())

    def candidate_layers(self) -> list[str]:
        """The semantic block's cross-attention layers (the modulated layers to choose from)."""
        from .layers import find_semantic_block

        return list(find_semantic_block(self.model.unet).cross_attention_layers)

    def region_grid(self, cfg: EmerDiffConfig | None = None) -> tuple[int, int]:
        """(h, w) of the modulation layer's token grid."""
        _, layer = _features.layer_names(self.model, cfg or self.cfg, self.image_size)
        stride = self.model.architecture.geometry(self.model).layer_downsample(layer)
        h, w = self.latent().shape[-2:]
        return h // stride, w // stride

    def cell_region(self, row: int, col: int, cfg: EmerDiffConfig | None = None) -> torch.Tensor:
        """(h, w) bool with the one cell (row, col) set."""
        h, w = self.region_grid(cfg)
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"cell ({row}, {col}) is outside the {h}x{w} grid")
        region = torch.zeros(h, w, dtype=torch.bool)
        region[row, col] = True
        return region

    def mask_region(self, index: int, cfg: EmerDiffConfig | None = None) -> torch.Tensor:
        """(h, w) bool of k-means mask ``index`` under ``cfg``."""
        lowres = self.masks(cfg)
        count = int(lowres.max()) + 1
        if not 0 <= index < count:
            raise ValueError(f"mask {index} does not exist; masks are 0..{count - 1}")
        return lowres == index

    def miou(self, labels: torch.Tensor) -> float | None:
        """Hungarian mIoU of (S, S) ``labels`` against the session's labels (None without)."""
        from .evaluation.metrics import hungarian_miou

        return None if self.truth is None else float(hungarian_miou(labels, self.truth).miou)

    # ------------------------------------------------------------------------------ stages
    def latent(self) -> torch.Tensor:  # (C, h, w), encoded once
        with self._request(0):
            return self._memo(("latent",), lambda: self.model.encode(self.pixels[None])[0])

    def features(self, cfg: EmerDiffConfig | None = None) -> torch.Tensor:
        """(h, w, C) features at ``cfg``'s feature layer and t_f."""
        r = self.resolved(cfg)
        key = ("features",) + stage_key("features", r)
        with self._request(lambda: 0 if self._has(key) else 1):
            return self._memo(key, lambda: _features.extract_features(
                self.model, self.pixels, r, latent=self.latent()))

    def masks(self, cfg: EmerDiffConfig | None = None) -> torch.Tensor:
        """(h, w) int64 k-means masks (CPU)."""
        r = self.resolved(cfg)
        key = ("masks",) + stage_key("masks", r)
        with self._request(lambda: 0 if self._has(key) else self._plan_features(r)):
            return self._memo(key, lambda: _features.kmeans_masks(
                self.features(r), k=r.num_masks, seed=r.seed,
                normalization=r.feature_normalization))

    def inversion(self, cfg: EmerDiffConfig | None = None, depth: int | None = None):
        """The trajectory for ``cfg`` reaching at least ``depth`` (default its t_m): the one
        held when deep enough, else a new one to that depth (dropping the reference passes
        recorded on the old one)."""
        cfg = cfg or self.cfg
        if depth is None:  # t_m, or on a flow schedule the step it snaps to (1000 sigma)
            depth = _inversion.start_timestep(self.model, cfg)
        else:
            depth = int(depth)
            _inversion.check_timestep(self.model, depth, cfg.num_inference_steps,
                                      "modulation_timestep")
        key = ("inversion",) + stage_key("inversion", cfg)
        with self._request(lambda: self._plan_inversion(cfg, depth)):
            held = self._lookup(key)
            if held is not None and held.timesteps[0].item() >= depth:
                return held
            trajectory = _inversion.invert(
                self.model, self.pixels, _inversion.starting_at(self.model, cfg, depth),
                latent=self.latent(), progress=self.progress_bars)
            with self._table:
                self._drop_references(key)
            self._store(key, trajectory, "inversion")
            return trajectory

    def reference_pass(self, cfg: EmerDiffConfig | None = None):
        """The recorded unmodulated pass at ``cfg``'s t_m and injection on the held trajectory
        (:func:`emerdiff_lab.modulation.record_reference`), or None when it would take more
        than half of ``max_bytes``."""
        cfg = cfg or self.cfg
        key = ("reference_pass",) + stage_key("reference_pass", cfg)
        with self._request(lambda: self._plan_inversion(cfg) + (
                0 if self._has(key) else _inversion.steps_from(self.model, cfg))):
            trajectory = self.inversion(cfg)
            held = self._lookup(key)
            if held is not None and (held is _NOT_RECORDED or held.inversion is trajectory):
                return None if held is _NOT_RECORDED else held
            recorded = _modulation.record_reference(self.model, trajectory, cfg,
                                                    max_bytes=self.max_bytes // 2)
            self._store(key, _NOT_RECORDED if recorded is None else recorded, "reference_pass")
            return recorded

    def raw_maps(self, cfg: EmerDiffConfig | None = None, path: str = "batched") -> torch.Tensor:
        """(K, S, S) float32 raw pixel-change maps of every k-means mask (CPU)."""
        if path not in MAP_PATHS:
            raise ValueError(f"path must be one of {MAP_PATHS}, got {path!r}")
        r = self.resolved(cfg)
        key = ("raw_maps", path) + stage_key("raw_maps", r)
        with self._request(lambda: 0 if self._has(key) else self._plan_maps(r, path)):
            held = self._lookup(key)
            held = held if held is not None else self._read_store(key, r)
            if held is not None:
                return held
            lowres, trajectory = self.masks(r), self.inversion(r)
            maps = _modulation.pixel_change_maps(self.model, trajectory, lowres, r, path=path,
                                                 progress=self.progress_bars)
            self._store(key, maps, "raw_maps")
            self._write_store(key, lowres, maps)
            return maps

    def labels(self, cfg: EmerDiffConfig | None = None, path: str = "batched") -> torch.Tensor:
        """(S, S) int64 EmerDiff labels at model resolution (blur, normalisation applied)."""
        r = self.resolved(cfg)
        check_segment_settings(self.model, r, self.image_size)
        key = ("labels", path) + stage_key("labels", r)
        with self._request(lambda: 0 if self._has(key) else self._plan_maps(r, path)):
            return self._memo(key, lambda: prepare_maps(
                self.raw_maps(r, path), r.blur_sigma, r.normalize_maps).argmax(dim=0).cpu())

    def segment(self, cfg: EmerDiffConfig | None = None, *, original_size: bool = True,
                path: str = "batched", keep_intermediates: bool = False) -> Segmentation:
        """What :func:`emerdiff_lab.segment` returns for this image and ``cfg``."""
        from .features import mask_embeddings

        cfg = cfg or self.cfg
        r = self.resolved(cfg)
        check_segment_settings(self.model, r, self.image_size)
        # the maps' plan counts the features when it needs the masks; else they may still be due
        with self._request(lambda: self._plan_maps(r, path) or self._plan_features(r)):
            raw, lowres, features = self.raw_maps(r, path), self.masks(r), self.features(r)
            maps = prepare_maps(raw, r.blur_sigma, r.normalize_maps)
            model_labels = maps.argmax(dim=0)
            labels = labels_to_original(model_labels, self.prepared) if original_size \
                else model_labels
            num_masks = int(lowres.max()) + 1
            notes = []
            if num_masks < cfg.num_masks:
                notes.append(f"k-means found {num_masks} distinct masks, fewer than the "
                             f"{cfg.num_masks} asked for (the features hold fewer distinct "
                             f"vectors)")
            describe_time = getattr(self.model.architecture, "modulation_time", None)
            if describe_time is not None:  # a flow model: where t_m landed on its schedule
                notes.append(describe_time(self.model, r, self.image_size).describe())
            if self.model.random_weights:
                notes.append(f"model {self.model.model_id!r} has random weights: the result "
                             f"shows the method's mechanics, not semantics")
            return Segmentation(
                labels=labels.cpu(), model_labels=model_labels.cpu(), lowres_labels=lowres.cpu(),
                diff_maps=maps.cpu(), mask_embeddings=mask_embeddings(features, lowres).cpu(),
                config=cfg, num_masks=num_masks, image_size=self.image_size,
                provenance=provenance(self.model), notes=tuple(notes),
                intermediates=Intermediates(self.pixels.cpu(), features.cpu(),
                                            self.inversion(r), raw.cpu())
                if keep_intermediates else None)

    def perturbation(self, region, cfg: EmerDiffConfig | None = None, *,
                     path: str = "replayed"):
        """The :class:`~emerdiff_lab.Perturbation` of one (h, w) region under ``cfg``."""
        if path not in REGION_PATHS:
            raise ValueError(f"path must be one of {REGION_PATHS}, got {path!r}")
        r = self.resolved(cfg)
        region = self._check_region(region, r)
        steps = _inversion.steps_from(self.model, r)
        with self._request(lambda: self._plan_inversion(r) + steps * (
                not self._has(self._region_key(region, r, path)))):
            trajectory = self.inversion(r)
            reference = self.reference_pass(r) if path == "replayed" else None
            used = path if path != "replayed" or reference is not None else "batched"
            key = self._region_key(region, r, used)
            return self._memo(key, lambda: _modulation.perturb(
                self.model, trajectory, region, r, path="batched" if used == "replayed"
                else used, reference=reference))

    def provide(self, cfg: EmerDiffConfig | None = None, *, features=None, inversion=None):
        """Takes precomputed features or an inversion of this image (the caller vouches that
        they belong to it and to ``cfg``), as :func:`emerdiff_lab.segment` accepts them."""
        r = self.resolved(cfg)
        if features is not None:
            self._store(("features",) + stage_key("features", r), features, None)
        if inversion is not None:
            self._store(("inversion",) + stage_key("inversion", r), inversion, None)

    # ------------------------------------------------------------------------ cache table
    def is_cached(self, stage: str, cfg: EmerDiffConfig | None = None, *,
                  path: str = "batched", region=None) -> bool:
        """Whether ``stage`` ("features", "masks", "raw_maps", "labels", "one_region") for
        ``cfg`` is held in memory (for "one_region": ``region`` under ``path``)."""
        r = self.resolved(cfg)
        if stage == "one_region":
            region = self._check_region(region, r)
            paths = ("replayed", "batched") if path == "replayed" else (path,)
            return any(self._has(self._region_key(region, r, p)) for p in paths)
        key = (stage, path) + stage_key(stage, r) if stage in ("raw_maps", "labels") \
            else (stage,) + stage_key(stage, r)
        return self._has(key)

    def cache_info(self) -> dict:
        """What the session holds: entries per stage, bytes, the cap, hits and misses, how
        often each stage was computed, and the held trajectories' depths."""
        with self._table:
            stages: dict[str, int] = {}
            for key, _ in self._entries.items():
                stages[key[0]] = stages.get(key[0], 0) + 1
            return {"entries": len(self._entries), "by_stage": stages,
                    "bytes": sum(n for _, n in self._entries.values()),
                    "max_bytes": self.max_bytes, "hits": self.hits, "misses": self.misses,
                    "computed": dict(self.computed),
                    "reference_passes": sum(1 for k, (v, _) in self._entries.items()
                                            if k[0] == "reference_pass"
                                            and v is not _NOT_RECORDED),
                    "inversion_depths": [int(v.timesteps[0]) for k, (v, _) in
                                         self._entries.items() if k[0] == "inversion"]}

    def clear(self) -> None:
        with self._table:
            self._entries.clear()

    def _has(self, key) -> bool:
        return key in self._entries    # one dict lookup: atomic under the GIL

    def _lookup(self, key):
        with self._table:
            if key not in self._entries:
                self.misses += 1
                return None
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key][0]

    def _memo(self, key, compute):
        held = self._lookup(key)
        if held is None:
            held = compute()
            self._store(key, held, key[0])
        return held

    def _store(self, key, value, stage: str | None) -> None:
        with self._table:
            if stage is not None:
                self.computed[stage] = self.computed.get(stage, 0) + 1
            self._entries[key] = (value, _nbytes(value))
            self._entries.move_to_end(key)
            while len(self._entries) > 1 and \
                    sum(n for _, n in self._entries.values()) > self.max_bytes:
                old, _ = self._entries.popitem(last=False)
                if old[0] == "inversion":   # its reference passes are tied to it
                    self._drop_references(old)

    def _drop_references(self, inversion_key: tuple) -> None:
        """Forgets the reference passes recorded on that trajectory (table lock held)."""
        for key in [k for k in self._entries if k[0] == "reference_pass"
                    and k[1:len(inversion_key)] == inversion_key[1:]]:
            del self._entries[key]

    def _region_key(self, region: torch.Tensor, r: EmerDiffConfig, path: str) -> tuple:
        packed = np.packbits(region.numpy()).tobytes()
        return ("one_region", path, tuple(region.shape), packed) + stage_key("one_region", r)

    def _check_region(self, region, r: EmerDiffConfig) -> torch.Tensor:
        region = torch.as_tensor(region).cpu()
        expected = self.region_grid(r)
        if region.ndim != 2 or tuple(region.shape) != expected:
            raise ValueError(f"region must be an (h, w) = {expected} mask on the modulation "
                             f"layer's grid, got shape {tuple(region.shape)}")
        if region.dtype != torch.bool and not ((region == 0) | (region == 1)).all():
            raise ValueError("region must be boolean or hold only 0 and 1")
        return region.bool()

    # ------------------------------------------------------------------------ disk store
    def _store_path(self, key: tuple) -> Path:
        if self._weights is None:
            from .figures.context import weights_fingerprint

            self._weights = weights_fingerprint(self.model)
        return self.store.path(key, self._weights, self.model, self.pixels)

    def _read_store(self, key: tuple, r: EmerDiffConfig):
        stored = None if self.store is None else self.store.read(self._store_path(key))
        if stored is None:
            return None
        lowres, maps = stored
        self._store(("masks",) + stage_key("masks", r), lowres, None)
        self._store(key, maps, None)
        return maps

    def _write_store(self, key: tuple, lowres: torch.Tensor, maps: torch.Tensor) -> None:
        if self.store is not None:
            self.store.write(self._store_path(key), lowres, maps)

    # -------------------------------------------------------------------------- progress
    @contextmanager
    def _request(self, plan):
        """Holds the lock; the outermost request of a thread plans its denoiser calls
        (``plan``: an int or a function giving one) and reports them to ``on_progress``."""
        with self._work:
            self._check_bound()
            if self._calls is not None or self.on_progress is None:
                yield
                return
            total = int(plan() if callable(plan) else plan)
            if total == 0:
                yield
                return
            self._calls = [0, total]
            callback = self.on_progress

            def tick():
                self._calls[0] += 1
                self._calls[1] = max(self._calls)
                callback(self._calls[0], self._calls[1])

            token = _inversion.UNET_CALL_OBSERVER.set(tick)
            try:
                yield
                if self._calls[0] < self._calls[1]:   # k-means found fewer masks than asked
                    callback(self._calls[1], self._calls[1])
            finally:
                _inversion.UNET_CALL_OBSERVER.reset(token)
                self._calls = None

    def _plan_features(self, r: EmerDiffConfig) -> int:
        return int(not self._has(("features",) + stage_key("features", r)))

    def _plan_inversion(self, cfg: EmerDiffConfig, depth: int | None = None) -> int:
        cfg = cfg if depth is None else _inversion.starting_at(self.model, cfg, depth)
        with self._table:
            held = self._entries.get(("inversion",) + stage_key("inversion", cfg))
        if held is not None and \
                held[0].timesteps[0].item() >= _inversion.start_timestep(self.model, cfg):
            return 0
        steps = _inversion.steps_from(self.model, cfg)
        return math.ceil(steps / (cfg.batch_size or steps))

    def _plan_maps(self, r: EmerDiffConfig, path: str) -> int:
        if self._has(("raw_maps", path) + stage_key("raw_maps", r)):
            return 0
        with self._table:
            held = self._entries.get(("masks",) + stage_key("masks", r))
        k = int(held[0].max()) + 1 if held is not None else r.num_masks
        steps = _inversion.steps_from(self.model, r)
        if path == "reference":
            calls = 2 * k * steps * (2 if r.attention_injection else 1)
        else:
            shape = SimpleNamespace(latents=torch.empty(0, 0, *self.latent().shape[-2:]))
            per_call = r.batch_size or _modulation.auto_batch_size(self.model, shape, 2 * k)
            calls = math.ceil(2 * k / max(1, per_call - 1)) * steps
        masks = 0 if held is not None else self._plan_features(r)
        return calls + masks + self._plan_inversion(r)


def _nbytes(value) -> int:
    """Bytes a cached value holds (tensors, trajectories, reference passes, perturbations)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, _modulation.ReferencePass):
        return value.nbytes + _nbytes(value.latent)
    if isinstance(value, _inversion.Inversion):
        return _nbytes(value.latents) + _nbytes(value.noise)
    if isinstance(value, _modulation.Perturbation):
        return sum(_nbytes(getattr(value, f)) for f in ("plus", "minus", "diff", "reference"))
    return 0
