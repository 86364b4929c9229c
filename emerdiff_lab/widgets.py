"""The perturbation explorer: pick a region of the feature grid, set lambda, t_m, the modulated
layer and attention injection, and see I+, I- and the difference map update; press "Segment" to
see the whole segmentation those settings make, beside naive upsampling and the ground truth.

Two layers, so that the logic can be tested without a browser:

- :class:`PerturbationSession` holds one image's features, k-means masks and full inversion (and
  its labels, when it has them), and answers ``perturbation(region, ...)`` and
  ``segmentation(...)`` from caches (a revisited setting costs nothing);
- :class:`Explorer` is the ipywidgets app on top of it. ``open_explorer()`` builds and shows one
  in a single line: by default the trained ToyWorld model on a held-out test scene.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from .plotting import (
    grid_image,
    heatmap_rgb,
    label_colours,
    matched_mapping,
    model_tag,
    png_bytes,
    to_numpy_image,
)

DISPLAY_SIZE = 256
# The explorer's default image: the first held-out *test* scene of ToyWorld (seed
# HELDOUT_SEED_START + DEFAULT_SCENE); its sky, sand, tree, rock and thin fence make good regions.
DEFAULT_SCENE = 0


@dataclass(frozen=True)
class Setting:
    """Everything a perturbation depends on besides the image: the cache key."""

    region: bytes
    grid: tuple[int, int]
    strength: float
    timestep: int
    layer: str
    injection: bool
    placement: str


@dataclass(frozen=True)
class SegmentationView:
    """The whole segmentation for one setting of the explorer's controls.

    Attributes:
        labels: (S, S) int64 EmerDiff mask ids (argmax of the blurred difference maps).
        naive: (S, S) int64 the same k-means masks upsampled bilinearly (the paper's baseline).
        miou, naive_miou: per-image Hungarian mIoU against the session's labels, or None
            without labels.
        seconds: time the computation took (0 when it came from the cache).
    """

    labels: torch.Tensor
    naive: torch.Tensor
    miou: float | None
    naive_miou: float | None
    seconds: float


class PerturbationSession:
    """One image prepared for repeated perturbations.

    Computes once: features and k-means masks (``lowres``), and a full-trajectory inversion, so
    that any t_m on the schedule can be explored. ``perturbation`` caches its results (least
    recently used first out, ``max_entries`` of them). Per t_m and injection setting it also
    records the unmodulated pass once (:func:`emerdiff_lab.modulation.record_reference`), when
    it fits in ``reference_budget`` bytes, so that a new region costs two batch elements per
    UNet call instead of three; the default setting's is recorded up front.

    Attributes:
        image: (3, S, S) the image the model sees.
        labels: (S, S) int64 ground-truth classes (255 = ignore), or None.
        features: (h, w, C); lowres: (h, w) int64 k-means masks.
        grid: (h, w) of the modulation layers' token grid.
        timesteps: the schedule's timesteps, ascending (valid t_m values).
        layers: the cross-attention layers of the semantic block (valid modulated layers).
        hits, misses: cache statistics.
    """

    def __init__(self, model, image, cfg=None, *, labels=None, image_size: int | None = None,
                 max_entries: int = 64, progress: bool = False,
                 reference_budget: int = 512 * 2**20):
        """``labels``: optional (H, W) class ids of ``image`` (255 = ignore); cropped and resized
        (nearest) the way the image is, so that the segmentation can be scored."""
        from .features import extract_features, kmeans_masks, layer_names
        from .evaluation.datasets import label_to_model
        from .images import load_image
        from .inversion import invert
        from .layers import find_semantic_block

        self.model = model
        self.cfg = cfg or model.default_config
        if image_size is None:
            image_size = model.native_image_size
        self.image = load_image(image, image_size)
        self.image_size = image_size
        self.labels = None if labels is None else \
            torch.from_numpy(label_to_model(np.asarray(labels).astype(np.int64), image_size))
        self.features = extract_features(model, self.image, self.cfg)
        self.lowres = kmeans_masks(self.features, k=self.cfg.num_masks, seed=self.cfg.seed,
                                   normalization=self.cfg.feature_normalization).cpu()
        self.inversion = invert(model, self.image, self.cfg, full_trajectory=True,
                                progress=progress)
        self.timesteps = sorted(int(t) for t in self.inversion.timesteps)
        block = find_semantic_block(model.unet)
        self.layers = list(block.cross_attention_layers)
        self.default_layer = layer_names(model, self.cfg, image_size)[1]
        self.grid = (block.feature_size(image_size, model.vae_scale_factor),) * 2
        self.num_masks = int(self.lowres.max()) + 1
        self.max_entries = max_entries
        self._cache: OrderedDict[Setting, object] = OrderedDict()
        self._segmentations: OrderedDict[tuple, SegmentationView] = OrderedDict()
        self.hits = 0
        self.misses = 0
        self.last_seconds = 0.0
        self.reference_budget = reference_budget
        self._references: OrderedDict[tuple, object] = OrderedDict()
        self._reference_pass(self.cfg)

    # -- regions
    def cell_region(self, row: int, col: int) -> torch.Tensor:
        """(h, w) bool with the one cell (row, col) set."""
        h, w = self.grid
        if not (0 <= row < h and 0 <= col < w):
            raise ValueError(f"cell ({row}, {col}) is outside the {h}x{w} grid")
        region = torch.zeros(self.grid, dtype=torch.bool)
        region[row, col] = True
        return region

    def mask_region(self, index: int) -> torch.Tensor:
        """(h, w) bool of k-means mask ``index``."""
        if not 0 <= index < self.num_masks:
            raise ValueError(f"mask {index} does not exist; masks are 0..{self.num_masks - 1}")
        return self.lowres == index

    # -- the cached computation
    def setting(self, region, *, strength: float | None = None, timestep: int | None = None,
                layer: str | None = None, injection: bool | None = None,
                placement: str | None = None) -> Setting:
        region = torch.as_tensor(region).bool().cpu()
        if tuple(region.shape) != self.grid:
            raise ValueError(f"region must be {self.grid}, got {tuple(region.shape)}")
        timestep = int(self.cfg.modulation_timestep if timestep is None else timestep)
        if timestep not in self.timesteps:
            raise ValueError(f"t_m={timestep} is not on the schedule; choose one of "
                             f"{self.timesteps}")
        return Setting(
            region=np.packbits(region.numpy()).tobytes(), grid=self.grid,
            strength=float(self.cfg.modulation_strength if strength is None else strength),
            timestep=timestep, layer=layer or self.default_layer,
            injection=bool(self.cfg.attention_injection if injection is None else injection),
            placement=placement or self.cfg.offset_placement)

    def is_cached(self, setting: Setting) -> bool:
        return setting in self._cache

    def perturbation(self, region, **options):
        """The :class:`emerdiff_lab.Perturbation` of ``region`` under ``options`` (strength,
        timestep, layer, injection, placement; None = the session's config); cached."""
        from .modulation import perturb

        key = self.setting(region, **options)
        if key in self._cache:
            self.hits += 1
            self._cache.move_to_end(key)
            self.last_seconds = 0.0
            return self._cache[key]
        self.misses += 1
        cfg = self.cfg.replace(modulation_strength=key.strength, modulation_timestep=key.timestep,
                               modulation_layer=key.layer, attention_injection=key.injection,
                               offset_placement=key.placement)
        start = time.perf_counter()
        result = perturb(self.model, self.inversion, torch.as_tensor(region).bool(), cfg,
                         reference=self._reference_pass(cfg))
        self.last_seconds = time.perf_counter() - start
        self._cache[key] = result
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return result

    def _reference_pass(self, cfg):
        """The recorded unmodulated pass for cfg's t_m and injection (recorded on first use), or
        None where it would not fit in ``reference_budget``; the passes held together stay
        within that budget (least recently used dropped first)."""
        from .modulation import record_reference

        key = (int(cfg.modulation_timestep), bool(cfg.attention_injection))
        if key not in self._references:
            self._references[key] = record_reference(self.model, self.inversion, cfg,
                                                      max_bytes=self.reference_budget)
        self._references.move_to_end(key)
        while sum(r.nbytes for r in self._references.values() if r is not None) \
                > self.reference_budget:
            self._references.popitem(last=False)
        return self._references[key]

    def cache_info(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._cache),
                "max_entries": self.max_entries, "segmentations": len(self._segmentations),
                "reference_passes": sum(r is not None for r in self._references.values())}

    # -- the whole segmentation
    def segmentation_key(self, **options) -> tuple:
        """What a segmentation depends on: every option of a perturbation but the region."""
        key = self.setting(torch.zeros(self.grid, dtype=torch.bool), **options)
        return (key.strength, key.timestep, key.layer, key.injection, key.placement)

    def has_segmentation(self, **options) -> bool:
        return self.segmentation_key(**options) in self._segmentations

    def segmentation(self, **options) -> SegmentationView:
        """Every k-means mask perturbed under ``options`` (as :meth:`perturbation`), assembled
        into labels with the session's blur; cached per setting (the last ``max_entries // 8``,
        at least 4). Costs about K single-cell perturbations, batched."""
        from .assembly import prepare_maps, upsample_bilinear
        from .modulation import pixel_change_maps

        key = self.segmentation_key(**options)
        if key in self._segmentations:
            self._segmentations.move_to_end(key)
            return dataclasses.replace(self._segmentations[key], seconds=0.0)
        strength, timestep, layer, injection, placement = key
        cfg = self.cfg.replace(modulation_strength=strength, modulation_timestep=timestep,
                               modulation_layer=layer, attention_injection=injection,
                               offset_placement=placement)
        start = time.perf_counter()
        maps = pixel_change_maps(self.model, self.inversion, self.lowres, cfg, progress=False)
        labels = prepare_maps(maps, cfg.blur_sigma, cfg.normalize_maps).argmax(dim=0).cpu()
        naive = upsample_bilinear(self.lowres, self.image_size)
        view = SegmentationView(labels, naive, self._miou(labels), self._miou(naive),
                                time.perf_counter() - start)
        self._segmentations[key] = view
        while len(self._segmentations) > max(4, self.max_entries // 8):
            self._segmentations.popitem(last=False)
        return view

    def _miou(self, labels: torch.Tensor) -> float | None:
        from .evaluation.metrics import hungarian_miou

        return None if self.labels is None else float(hungarian_miou(labels, self.labels).miou)


class Explorer:
    """The ipywidgets app. Controls (all public attributes, so code can drive them):

    ``mode`` (ToggleButtons "cell" / "mask"), ``row`` and ``col`` (IntSliders, the selected cell),
    ``mask`` (Dropdown), ``cells`` (a grid of buttons, one per feature cell, coloured by k-means
    mask: clicking selects that cell, or its mask in mask mode), ``strength`` (lambda, log
    slider), ``timestep`` (t_m, selection slider), ``layer`` (Dropdown), ``injection``
    (Checkbox), ``placement`` (Dropdown), ``overlay`` (Checkbox: the difference map blended over
    the image), ``segment_button`` (Button: the whole segmentation for the current setting).
    Views: ``image_view`` (image, grid and selection), ``plus_view``, ``minus_view``,
    ``diff_view`` (PNG ``ipywidgets.Image``), ``status`` (HTML); the segmentation panel
    ``segment_panel`` (hidden until "Segment" is first pressed) holds ``naive_view``,
    ``emerdiff_view``, ``truth_view`` and ``segment_status``. Every change recomputes through
    the session's caches; the panel shows the current setting's segmentation when it has been
    computed, and says so when the controls have moved on since.
    """

    def __init__(self, session: PerturbationSession, *, display_size: int = DISPLAY_SIZE):
        import ipywidgets as w

        self.session = session
        self.display_size = display_size
        cfg, (h, wd) = session.cfg, session.grid
        self.mode = w.ToggleButtons(options=["cell", "mask"], value="cell",
                                    description="region")
        self.row = w.IntSlider(value=h // 2, min=0, max=h - 1, description="row")
        self.col = w.IntSlider(value=wd // 2, min=0, max=wd - 1, description="column")
        self.mask = w.Dropdown(options=[(f"mask {i}", i) for i in range(session.num_masks)],
                               value=int(session.lowres[h // 2, wd // 2]), description="mask")
        self.strength = w.FloatLogSlider(value=float(cfg.modulation_strength), base=10, min=-1,
                                         max=2.5, step=0.1, description="lambda")
        self.timestep = w.SelectionSlider(options=session.timesteps,
                                          value=int(cfg.modulation_timestep), description="t_m")
        self.layer = w.Dropdown(options=[(_short(n), n) for n in session.layers],
                                value=session.default_layer, description="layer")
        self.injection = w.Checkbox(value=bool(cfg.attention_injection),
                                    description="attention injection")
        self.placement = w.Dropdown(options=["after_projection", "before_projection"],
                                    value=cfg.offset_placement, description="offset")
        self.overlay = w.Checkbox(value=False, description="difference map over the image")
        self.segment_button = w.Button(
            description="Segment", button_style="primary", icon="th",
            tooltip="perturb every k-means mask with the current setting and assemble the "
                    "segmentation (about K perturbations; cached per setting)")
        self.segment_button.add_class("edl-segment")
        self.segment_button.on_click(lambda _: self.segment())
        self.cells = self._cell_buttons()
        self.image_view = w.Image(format="png")
        self.plus_view = w.Image(format="png")
        self.minus_view = w.Image(format="png")
        self.diff_view = w.Image(format="png")
        self.naive_view = w.Image(format="png")
        self.emerdiff_view = w.Image(format="png")
        self.truth_view = w.Image(format="png")
        self.status = w.HTML()
        self.status.add_class("edl-status")
        self.segment_status = w.HTML("press <b>Segment</b> to compute the whole segmentation")
        self.segment_status.add_class("edl-seg-status")
        for view, css in ((self.image_view, "edl-image"), (self.plus_view, "edl-plus"),
                          (self.minus_view, "edl-minus"), (self.diff_view, "edl-diff"),
                          (self.naive_view, "edl-seg-naive"),
                          (self.emerdiff_view, "edl-seg-emerdiff"),
                          (self.truth_view, "edl-seg-truth")):
            view.add_class(css)
            view.layout.width = f"{display_size}px"
        for control, css in ((self.row, "edl-row"), (self.col, "edl-col"),
                             (self.strength, "edl-strength"), (self.timestep, "edl-timestep"),
                             (self.mask, "edl-mask"), (self.layer, "edl-layer"),
                             (self.injection, "edl-injection"), (self.mode, "edl-mode"),
                             (self.placement, "edl-placement"), (self.overlay, "edl-overlay")):
            control.add_class(css)
            control.observe(self._on_change, names="value")
        self.updates = 0
        self.segment_panel = self._segment_panel()
        self.widget = self._layout()
        self.update()

    # -- state
    def region(self) -> torch.Tensor:
        if self.mode.value == "mask":
            return self.session.mask_region(self.mask.value)
        return self.session.cell_region(self.row.value, self.col.value)

    def options(self) -> dict:
        return {"strength": float(self.strength.value), "timestep": int(self.timestep.value),
                "layer": self.layer.value, "injection": bool(self.injection.value),
                "placement": self.placement.value}

    def current(self):
        """The :class:`emerdiff_lab.Perturbation` on display (from the cache)."""
        return self.session.perturbation(self.region(), **self.options())

    # -- updates
    def _on_change(self, change) -> None:
        if change["owner"] is self.mode and change["new"] == "mask":
            self.mask.value = int(self.session.lowres[self.row.value, self.col.value])
        self.update()

    def _on_cell_click(self, row: int, col: int) -> None:
        def select():
            self.row.value, self.col.value = row, col
            self.mask.value = int(self.session.lowres[row, col])

        self._quiet(select)
        self.update()

    def _quiet(self, action) -> None:
        for control in (self.row, self.col, self.mask):
            control.unobserve(self._on_change, names="value")
        try:
            action()
        finally:
            for control in (self.row, self.col, self.mask):
                control.observe(self._on_change, names="value")

    def update(self) -> None:
        """Recomputes (or fetches) the perturbation for the controls and redraws every view."""
        session = self.session
        options = self.options()
        region = self.region()
        cached = session.is_cached(session.setting(region, **options))
        start = time.perf_counter()
        pert = session.perturbation(region, **options)
        seconds = time.perf_counter() - start
        size = self.display_size
        self.image_view.value = png_bytes(grid_image(session.image, session.grid, region,
                                                     session.lowres if self.mode.value == "mask"
                                                     else None, display_size=size))
        self.plus_view.value = png_bytes(_to_uint8(pert.plus), size)
        self.minus_view.value = png_bytes(_to_uint8(pert.minus), size)
        heat = heatmap_rgb(pert.diff)
        if self.overlay.value:
            heat = _blend(session.image, heat)
        self.diff_view.value = png_bytes(heat, size)
        info = session.cache_info()
        where = "from cache" if cached else f"computed in {seconds:.2f} s"
        self.status.value = (
            f"<b>{model_tag(session.model)}</b><br>"
            f"region: {int(region.sum())} cell(s); max change {float(pert.diff.max()):.4f} "
            f"({where}); cache {info['hits']} hits / {info['misses']} misses")
        self._paint_cells(region)
        self._show_segmentation()
        self.updates += 1

    # -- the whole segmentation
    def segment(self) -> SegmentationView:
        """Computes (or fetches) the segmentation for the current setting and shows it."""
        self.segment_status.value = "segmenting: every k-means mask perturbed ..."
        view = self.session.segmentation(**self.options())
        self.segment_panel.layout.display = "flex"
        self._show_segmentation(view)
        return view

    def _show_segmentation(self, view: SegmentationView | None = None) -> None:
        """Shows ``view`` (or the cached one for the current setting) in the panel; when none
        is cached, keeps the last pictures and says that they belong to another setting."""
        session, options = self.session, self.options()
        if view is None:
            if self.segment_panel.layout.display == "none":
                return
            if not session.has_segmentation(**options):
                self.segment_status.value = (
                    "<b>out of date:</b> the controls changed since this segmentation; press "
                    "<b>Segment</b> for the current setting")
                return
            view = session.segmentation(**options)
        truth = session.labels
        mapping = None if truth is None else matched_mapping(view.labels, truth)
        size = self.display_size
        self.naive_view.value = png_bytes(label_colours(view.naive, mapping), size)
        self.emerdiff_view.value = png_bytes(label_colours(view.labels, mapping), size)
        self.truth_view.value = png_bytes(
            label_colours(truth) if truth is not None else _to_uint8(session.image), size)
        where = "from cache" if view.seconds == 0 else f"computed in {view.seconds:.1f} s"
        if truth is None:
            scores = "no labels for this image: nothing to score (right: the image)"
        else:
            scores = (f"mIoU <b>EmerDiff {view.miou:.3f}</b> vs naive {view.naive_miou:.3f} "
                      f"({view.miou - view.naive_miou:+.3f})")
        self.segment_status.value = (
            f"{scores}; lambda={options['strength']:g}, t_m={options['timestep']}, "
            f"{_short(options['layer'])}, injection {'on' if options['injection'] else 'off'} "
            f"({where}). Colours: each mask in the colour of the class it is matched to "
            f"(black: none).")

    # -- layout
    def _cell_buttons(self):
        import ipywidgets as w

        from .io import colorize

        h, wd = self.session.grid
        colors = colorize(self.session.lowres.numpy())
        size = max(12, min(28, 320 // max(h, wd)))
        self._cell_colors = [[f"#{c[0]:02x}{c[1]:02x}{c[2]:02x}" for c in row] for row in colors]
        buttons = []
        for i in range(h):
            for j in range(wd):
                button = w.Button(description="", tooltip=f"cell ({i}, {j}), mask "
                                                          f"{int(self.session.lowres[i, j])}",
                                  layout=w.Layout(width=f"{size}px", height=f"{size}px",
                                                  padding="0", margin="0"))
                button.style.button_color = self._cell_colors[i][j]
                button.on_click(lambda _, i=i, j=j: self._on_cell_click(i, j))
                buttons.append(button)
        self._buttons = buttons
        return w.GridBox(buttons, layout=w.Layout(
            grid_template_columns=f"repeat({wd}, {size}px)", grid_gap="1px"))

    def _paint_cells(self, region: torch.Tensor) -> None:
        wd = self.session.grid[1]
        for index, button in enumerate(self._buttons):
            i, j = divmod(index, wd)
            button.style.button_color = "#00ffff" if bool(region[i, j]) else \
                self._cell_colors[i][j]

    def _layout(self):
        import ipywidgets as w

        def titled(view, text):
            return w.VBox([w.HTML(f"<b>{text}</b>"), view])

        controls = w.VBox([self.mode, self.row, self.col, self.mask, self.strength,
                           self.timestep, self.layer, self.injection, self.placement,
                           self.overlay, self.segment_button])
        picker = w.VBox([w.HTML("<b>click a cell</b> (colour = k-means mask)"), self.cells])
        views = w.HBox([titled(self.image_view, "image, grid, selection"),
                        titled(self.plus_view, "I+"), titled(self.minus_view, "I-"),
                        titled(self.diff_view, "difference ||I- - I+||")])
        return w.VBox([self.status, w.HBox([controls, picker]), views, self.segment_panel])

    def _segment_panel(self):
        import ipywidgets as w

        truth = "ground truth" if self.session.labels is not None else "image (no labels)"
        views = w.HBox([w.VBox([w.HTML(f"<b>{text}</b>"), view]) for view, text in (
            (self.naive_view, "naive upsampling of the masks"),
            (self.emerdiff_view, "EmerDiff"), (self.truth_view, truth))])
        panel = w.VBox([w.HTML("<b>Whole segmentation</b> (all masks, the setting above)"),
                        self.segment_status, views])
        panel.add_class("edl-segmentation")
        panel.layout.display = "none"
        return panel

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -- a static copy for papers and CI
    def snapshot(self, title: str = "Perturbation explorer (state on display)"):
        """A matplotlib figure of the current views, titled with the model's tag."""
        from .plotting import plot_perturbations

        opts = self.options()
        return plot_perturbations(
            self.session.image, [self.current()], model=self.session.model,
            title=f"{title}: lambda={opts['strength']:g}, t_m={opts['timestep']}, "
                  f"{_short(opts['layer'])}, injection {'on' if opts['injection'] else 'off'}")


def open_explorer(model="toyworld", image=None, cfg=None, *, labels=None,
                  image_size: int | None = None, device=None, display: bool = True,
                  **session_options) -> Explorer:
    """One line to an explorer: ``open_explorer()`` (the trained ToyWorld model on a held-out
    test scene, with its labels) or ``open_explorer(model, "photo.jpg")``.

    Args:
        model: a loaded model or an id for :func:`emerdiff_lab.load_model`.
        image: anything :func:`emerdiff_lab.load_image` takes; None: :func:`default_scene`.
        labels: (H, W) class ids of ``image`` (255 = ignore), to score "Segment"; with
            ``image=None`` the default scene's own labels.
        image_size: side the model sees (default: the model's native size).

    Returns:
        the :class:`Explorer` (shown when ``display``).
    """
    from .models import load_model

    if isinstance(model, str):
        model = load_model(model, device=device)
    if image is None:
        image, labels = default_scene(image_size or model.native_image_size)
    session = PerturbationSession(model, image, cfg, labels=labels, image_size=image_size,
                                  **session_options)
    explorer = Explorer(session)
    if display:
        from IPython.display import display as show

        show(explorer.widget)
    return explorer


def default_scene(size: int = 64, index: int = DEFAULT_SCENE):
    """A held-out ToyWorld *test* scene (seed ``HELDOUT_SEED_START + index``; never a training
    or validation seed) and its exact labels.

    Returns:
        ``(image, labels)``: (3, S, S) float32 in [0, 1] and (S, S) int64, S the smallest
        size the generator draws at that is at least ``size`` (at most 128); the session
        resizes both to the model's input size.
    """
    from .toyworld.scenes import HELDOUT_SEED_START, SIZES, generate_scene

    native = min([s for s in SIZES if s >= size] or [max(SIZES)])
    image, labels = generate_scene(HELDOUT_SEED_START + index, native)
    return (torch.from_numpy(image).permute(2, 0, 1).float() / 255,
            torch.from_numpy(labels).long())


def _short(layer: str) -> str:
    parts = layer.split(".")
    return f"{parts[0]}.{parts[1]} attn {parts[3]}" if len(parts) > 3 else layer


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy() * 255).round() \
        .astype(np.uint8)


def _blend(image: torch.Tensor, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """(H, W, 3) uint8 heat map blended over the (3, H, W) image, (H, W, 3) uint8: where the
    change is small the image shows through, darkened; where it is large the heat map wins."""
    rgb = to_numpy_image(image) * 255
    return (rgb * (1 - alpha) + heat.astype(np.float32) * alpha).round().astype(np.uint8)
