"""The perturbation explorer: pick a region of the feature grid, set lambda, t_m, the modulated
layer and attention injection, and see I+, I- and the difference map update; press "Segment" to
see the whole segmentation those settings make, beside naive upsampling and the ground truth.

Two layers, so that the logic can be tested without a browser:

- a :class:`emerdiff_lab.session.Session` (made by :func:`explorer_session`) holds the image's
  stages and answers every perturbation and segmentation from its caches (a revisited setting
  costs nothing);
- :class:`Explorer` is the ipywidgets app on top of it: it turns its controls into configs
  (:meth:`Explorer.setting`) and asks the session. ``open_explorer()`` builds and shows one in a
  single line: by default the trained ToyWorld model on a held-out test scene.

Responsiveness (``background=True``, what ``open_explorer`` uses): the session is asked on one
worker thread (:class:`emerdiff_lab.worker.LatestWorker`), so the kernel keeps reading clicks;
a new request replaces the one waiting, only the newest result is drawn, and until it is the
pictures of the old one are dimmed and the status line says "computing..." with the denoising
steps done. ``background=False`` (the default of :class:`Explorer`, for tests and scripts)
computes every change before the call returns. The worker sets its own torch thread count
(:mod:`emerdiff_lab.threads`: one core left free).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import torch

from . import explorer_parts as parts
from .plotting import grid_image, heatmap_rgb, model_tag, png_bytes
from .scales import SHARED_VMAX, colorbar_html, eye_note

DISPLAY_SIZE = 170  # px per picture: two columns of two fit a 1366x768 screen
# The explorer's default image: the first held-out *test* scene of ToyWorld (seed
# HELDOUT_SEED_START + DEFAULT_SCENE); its sky, sand, tree, rock and thin fence make good regions.
DEFAULT_SCENE = 0
# One lock per model object: a model's attention processors are swapped while it modulates, so
# two explorers on the same model (a re-run cell) must not compute at the same time.
_MODEL_LOCKS: dict[int, threading.RLock] = {}


def model_lock(model) -> threading.RLock:
    return _MODEL_LOCKS.setdefault(id(model), threading.RLock())


@dataclass(frozen=True)
class SegmentationView:
    """The whole segmentation for one setting of the explorer's controls.

    Attributes:
        labels: (S, S) int64 EmerDiff mask ids (argmax of the blurred difference maps).
        naive: (S, S) int64 the same k-means masks upsampled bilinearly (the paper's baseline).
        miou, naive_miou: per-image Hungarian mIoU against the session's labels, or None
            without labels.
        seconds: time the computation took (0 when it came from the cache).
        bf2, naive_bf2: boundary F-scores (2 px at 128 px, classes matched as for mIoU), or
            None without labels.
    """

    labels: torch.Tensor
    naive: torch.Tensor
    miou: float | None
    naive_miou: float | None
    seconds: float
    bf2: float | None = None
    naive_bf2: float | None = None


def explorer_session(model, image, cfg=None, *, labels=None, image_size: int | None = None,
                     prepare: bool = True, **session_options):
    """A :class:`emerdiff_lab.session.Session` for the explorer; with ``prepare`` its
    trajectory reaches the top of the schedule (so that every t_m of the slider is served
    without inverting again) and the default setting's reference pass is recorded up front
    (else the explorer's first request does both, showing its progress)."""
    from .session import Session

    session = Session(model, image, labels, cfg=cfg, image_size=image_size, **session_options)
    if prepare:
        prepare_session(session)
    return session


def prepare_session(session) -> None:
    session.inversion(session.cfg, depth=max(session.timesteps()))
    session.reference_pass(session.cfg)


class Explorer:
    """The ipywidgets app. Controls (all public attributes, so code can drive them):

    ``mode`` ("cell" / "mask"), ``row`` and ``col`` (the selected cell), ``mask`` (Dropdown,
    beside ``mask_swatches``: each mask's colour), ``cells`` (a button per feature cell in its
    mask's colour: clicking selects that cell, or its mask in mask mode), ``strength`` (lambda,
    a text box taking exact values) with ``strength_slider`` (1-2-5 steps), ``timestep`` (t_m),
    ``layer``, ``injection``, ``placement``, ``overlay`` (the map over the image), ``scale``
    ("shared scale": every map on 0 to :data:`~emerdiff_lab.scales.SHARED_VMAX`, comparable;
    "own max": each map on its own maximum), ``segment_button`` (with ``segment_progress``).
    Views: ``image_view``, ``plus_view``, ``minus_view``, ``diff_view`` (PNG images),
    ``colorbar``, ``note`` (a change too small to see), ``status``; in the "whole segmentation"
    tab ``segment_panel`` (hidden until "Segment" is first pressed) with ``naive_view``,
    ``emerdiff_view``, ``truth_view``, ``class_legend`` and ``segment_status``.

    What the controls select is read from ``session`` (a :func:`explorer_session`) once, at
    construction: ``grid``, ``lowres``, ``num_masks``, ``timesteps``, ``layers``,
    ``default_layer``; ``hits`` and ``misses`` count perturbations asked for. ``class_names``
    name the label ids in the legend.
    """

    def __init__(self, session, *, display_size: int = DISPLAY_SIZE, background: bool = False,
                 class_names=None):

        from .threads import apply_interactive_threads
        from .worker import LatestWorker

        self.session, self.display_size, self.class_names = session, display_size, class_names
        self.cfg = session.cfg
        self.grid = session.region_grid()
        self.lowres = session.masks()
        self.num_masks = int(self.lowres.max()) + 1
        self.timesteps = session.timesteps()
        self.layers = session.candidate_layers()
        self.default_layer = session.resolved().modulation_layer
        self.hits = self.misses = self.updates = 0
        self.last_seconds = 0.0
        self.worker = LatestWorker(background,
                                   on_start=lambda: apply_interactive_threads(announce=False))
        self._prepared = max(session.cache_info()["inversion_depths"] or [0]) >= \
            max(self.timesteps)
        parts.build_controls(self)
        self.image_view.value = self._selection_png(self.region())
        for control, css in ((self.row, "edl-row"), (self.col, "edl-col"),
                             (self.strength, "edl-strength"), (self.timestep, "edl-timestep"),
                             (self.mask, "edl-mask"), (self.layer, "edl-layer"),
                             (self.injection, "edl-injection"), (self.mode, "edl-mode"),
                             (self.placement, "edl-placement"), (self.overlay, "edl-overlay"),
                             (self.scale, "edl-scale")):
            control.add_class(css)
            control.observe(self._on_change, names="value")
        self.strength_slider.add_class("edl-strength-slider")
        self.strength_slider.observe(self._on_lambda_step, names="value")
        self.segment_panel = parts.segment_panel(self)
        self.widget = parts.layout(self)
        self.update()

    # -- from controls to settings
    def setting(self, *, strength: float | None = None, timestep: int | None = None,
                layer: str | None = None, injection: bool | None = None,
                placement: str | None = None):
        """The config the controls' values (None: the session's) select."""
        timestep = int(self.cfg.modulation_timestep if timestep is None else timestep)
        if timestep not in self.timesteps:
            raise ValueError(f"t_m={timestep} is not on the schedule; choose one of "
                             f"{self.timesteps}")
        return self.cfg.replace(
            modulation_strength=float(self.cfg.modulation_strength if strength is None
                                      else strength),
            modulation_timestep=timestep, modulation_layer=layer or self.default_layer,
            attention_injection=bool(self.cfg.attention_injection if injection is None
                                     else injection),
            offset_placement=placement or self.cfg.offset_placement)

    def is_cached(self, region, **options) -> bool:
        return self.session.is_cached("one_region", self.setting(**options), path="replayed",
                                      region=region)

    def perturbation(self, region, **options):
        """The :class:`emerdiff_lab.Perturbation` of ``region`` under ``options`` (strength,
        timestep, layer, injection, placement; None = the session's config), from the
        session (the recorded reference pass replayed when it fits)."""
        cfg = self.setting(**options)
        cached = self.is_cached(region, **options)
        self.hits, self.misses = self.hits + cached, self.misses + (not cached)
        start = time.perf_counter()
        result = self.session.perturbation(region, cfg)
        self.last_seconds = 0.0 if cached else time.perf_counter() - start
        return result

    def has_segmentation(self, **options) -> bool:
        return self.session.is_cached("labels", self.setting(**options))

    def segmentation(self, **options) -> SegmentationView:
        """Every k-means mask perturbed under ``options`` (as :meth:`perturbation`), assembled
        into labels with the session's blur and scored; the session keeps it per setting."""
        from .assembly import upsample_bilinear

        cfg = self.setting(**options)
        cached = self.has_segmentation(**options)
        start = time.perf_counter()
        labels = self.session.labels(cfg)
        naive = upsample_bilinear(self.lowres, self.session.image_size)
        seconds = 0.0 if cached else time.perf_counter() - start
        ours, theirs = self._scores(labels), self._scores(naive)
        return SegmentationView(labels, naive, ours["miou"], theirs["miou"], seconds,
                                ours["bf2"], theirs["bf2"])

    def _scores(self, labels: torch.Tensor) -> dict:
        """mIoU and boundary F-score (2 px) of (S, S) ``labels`` under one Hungarian matching
        against the session's labels; None for each without labels."""
        from .evaluation.metrics import segmentation_scores

        if self.session.truth is None:
            return {"miou": None, "bf2": None}
        return segmentation_scores(labels, self.session.truth)

    # -- state (read on the main thread without asking the session, which may be busy)
    def region(self) -> torch.Tensor:
        if self.mode.value == "mask":
            return self.lowres == self.mask.value
        region = torch.zeros(self.grid, dtype=torch.bool)
        region[self.row.value, self.col.value] = True
        return region

    def options(self) -> dict:
        return {"strength": float(self.strength.value), "timestep": int(self.timestep.value),
                "layer": self.layer.value, "injection": bool(self.injection.value),
                "placement": self.placement.value}

    def current(self):
        """The :class:`emerdiff_lab.Perturbation` on display (from the cache)."""
        return self.perturbation(self.region(), **self.options())

    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until every requested picture is drawn (False if ``timeout`` passed)."""
        return self.worker.wait(timeout)

    # -- updates
    def _on_change(self, change) -> None:
        if change["owner"] is self.mode and change["new"] == "mask":
            self._quiet(lambda: setattr(self.mask, "value",
                                        int(self.lowres[self.row.value, self.col.value])))
        if change["owner"] is self.strength:
            self._quiet(lambda: setattr(self.strength_slider, "value",
                                        parts.nearest_step(change["new"])))
        self.update()

    def _on_lambda_step(self, change) -> None:
        self.strength.value = float(change["new"])    # its own observer updates

    def _on_cell_click(self, row: int, col: int) -> None:
        def select():
            self.row.value, self.col.value = row, col
            self.mask.value = int(self.lowres[row, col])

        self._quiet(select)
        self.update()

    def _quiet(self, action) -> None:
        """Runs ``action`` without the controls' observers (one update for several changes)."""
        self.strength_slider.unobserve(self._on_lambda_step, names="value")
        for control in (self.row, self.col, self.mask):
            control.unobserve(self._on_change, names="value")
        try:
            action()
        finally:
            for control in (self.row, self.col, self.mask):
                control.observe(self._on_change, names="value")
            self.strength_slider.observe(self._on_lambda_step, names="value")

    def _selection_png(self, region) -> bytes:
        return png_bytes(grid_image(self.session.pixels, self.grid, region,
                                    self.lowres if self.mode.value == "mask" else None,
                                    display_size=self.display_size))

    def update(self) -> None:
        """Asks for the perturbation of the controls' setting and draws it when it comes; the
        selection is drawn at once and the old pictures are marked stale meanwhile."""
        region, options = self.region(), self.options()
        self.image_view.value = self._selection_png(region)
        self._paint_cells(region)
        self.mask_swatches.value = parts.mask_swatches(self.num_masks, self.mask.value)
        where = "the reference pass (once per image)" if not self._prepared else \
            (f"cell ({self.row.value}, {self.col.value})" if self.mode.value == "cell"
             else f"mask {self.mask.value}")
        if self.worker.background:
            self._mark_stale(True)
            after = " (after the running Segment)" if self.worker.busy("segment") else ""
            self.status.value = self._status_head() + f"<b>computing {where}…</b>{after}"
        self.worker.submit(lambda: self._compute(region, options, where),
                           lambda result, error: self._draw(result, error, options),
                           lane="perturbation")

    def _compute(self, region, options, where):
        """On the worker: the perturbation (preparing the session first if needed), whether
        it was cached, its time, and the segmentation of the setting when it is cached."""
        def show(done, total, seconds):
            self.status.value = (self._status_head() + f"<b>computing {where}…</b> denoising "
                                 f"steps {done} / {total} ({seconds:.1f} s)")

        self.session.on_progress = parts.Progress(show) if self.worker.background else None
        try:
            with model_lock(self.session.model):
                return self._compute_locked(region, options)
        finally:
            self.session.on_progress = None

    def _compute_locked(self, region, options):
        """:meth:`_compute`'s work, under the model's lock."""
        if not self._prepared:
            prepare_session(self.session)
            self._prepared = True
        cached = self.is_cached(region, **options)
        start = time.perf_counter()
        pert = self.perturbation(region, **options)
        seconds = time.perf_counter() - start
        segmented = self.segmentation(**options) if (
            self.segment_panel.layout.display != "none"
            and self.has_segmentation(**options)) else None
        return region, pert, cached, seconds, segmented

    def _draw(self, result, error, options) -> None:
        """Draws every view of one result together (status, maps, colour bar, note)."""
        if error is not None:
            self._mark_stale(False)
            self.status.value = self._status_head() + f"<b>error:</b> {error}"
            if not self.worker.background:
                raise error
            return
        region, pert, cached, seconds, segmented = result
        size, largest = self.display_size, float(pert.diff.max())
        self.plus_view.value = png_bytes(parts.to_uint8(pert.plus), size)
        self.minus_view.value = png_bytes(parts.to_uint8(pert.minus), size)
        vmax = SHARED_VMAX if self.scale.value == parts.SCALES[0] else max(largest, 1e-12)
        heat = heatmap_rgb(pert.diff, vmax=vmax)
        if self.overlay.value:
            heat = parts.blend(self.session.pixels, heat)
        self.diff_view.value = png_bytes(heat, size)
        self.colorbar.value = colorbar_html(
            vmax, width=size, label=f"{self.scale.value}; largest change <b>{largest:.4f}</b>")
        self.note.value = eye_note(largest)
        where = "from cache" if cached else f"computed in {seconds:.2f} s"
        self.status.value = (
            self._status_head() + f"region: {int(region.sum())} cell(s); max change "
            f"{largest:.4f} ({where}); cache {self.hits} hits / {self.misses} misses")
        self._mark_stale(False)
        if not self.worker.busy("segment"):     # a running Segment draws its own result
            self._show_segmentation(segmented, options)
        self.updates += 1

    def _status_head(self) -> str:
        return f"<b>{model_tag(self.session.model)}</b><br>"

    def _mark_stale(self, stale: bool) -> None:
        for view in (self.plus_view, self.minus_view, self.diff_view):
            (view.add_class if stale else view.remove_class)("edl-stale")

    # -- the whole segmentation
    def segment(self, wait: bool = True) -> SegmentationView | None:
        """Computes (or fetches) the segmentation for the current setting and shows it, with
        the button disabled and the denoising steps counted meanwhile. Returns it (``wait``;
        the button does not wait)."""
        options, box = self.options(), {}
        self.segment_button.disabled = True
        self.segment_progress.value, self.segment_progress.layout.display = 0, "flex"
        self.segment_status.value = "<b>segmenting:</b> every k-means mask perturbed …"
        self.tabs.selected_index = 1

        def show(done, total, seconds):
            self.segment_status.value = (f"<b>segmenting:</b> denoising steps {done} / {total} "
                                         f"({seconds:.1f} s; all masks in one batch per step)")

        def job():
            self.session.on_progress = parts.Progress(show, self.segment_progress)
            try:
                with model_lock(self.session.model):
                    return self.segmentation(**options)
            finally:
                self.session.on_progress = None

        def done(view, error):
            self.segment_button.disabled = False
            self.segment_progress.layout.display = "none"
            if error is not None:
                self.segment_status.value = f"<b>error:</b> {error}"
                if not self.worker.background:
                    raise error
                return
            box["view"] = view
            self.segment_panel.layout.display = "flex"
            self.segment_hint.layout.display = "none"
            self._show_segmentation(view, options)

        self.worker.submit(job, done, lane="segment")
        if wait:
            self.worker.wait()
        return box.get("view")

    def _show_segmentation(self, view: SegmentationView | None, options: dict) -> None:
        """Shows ``view`` in the panel; None (the setting has none cached) keeps the last
        pictures and says that they belong to another setting."""
        if self.segment_panel.layout.display == "none":
            return
        if view is None:
            self.segment_status.value = (
                "<b>out of date:</b> the controls changed since this segmentation; press "
                "<b>Segment</b> for the current setting")
            return
        parts.draw_segmentation(self, view, options)

    def _paint_cells(self, region: torch.Tensor) -> None:
        wd = self.grid[1]
        for index, button in enumerate(self._buttons):
            i, j = divmod(index, wd)
            button.style.button_color = "#00ffff" if bool(region[i, j]) else \
                self._cell_colors[i][j]

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    # -- a static copy for papers and CI
    def snapshot(self, title: str = "Perturbation explorer (state on display)"):
        """A matplotlib figure of the current views, titled with the model's tag."""
        from .plotting import plot_perturbations

        self.wait()
        opts = self.options()
        return plot_perturbations(
            self.session.pixels, [self.current()], model=self.session.model,
            title=f"{title}: lambda={opts['strength']:g}, t_m={opts['timestep']}, "
                  f"{parts.short_layer(opts['layer'])}, injection "
                  f"{'on' if opts['injection'] else 'off'}")


def open_explorer(model="toyworld", image=None, cfg=None, *, labels=None,
                  image_size: int | None = None, device=None, display: bool = True,
                  background: bool = True, **session_options) -> Explorer:
    """One line to an explorer: ``open_explorer()`` (the trained ToyWorld model on a held-out
    test scene, with its labels) or ``open_explorer(model, "photo.jpg")``. Sets torch's thread
    count for interactive use first (:mod:`emerdiff_lab.threads`, printed once).

    Args:
        model: a loaded model or an id for :func:`emerdiff_lab.load_model`.
        image: anything :func:`emerdiff_lab.load_image` takes; None: :func:`default_scene`.
        labels: (H, W) class ids of ``image`` (255 = ignore), to score "Segment"; with
            ``image=None`` the default scene's own labels (named in the legend).
        image_size: side the model sees (default: the model's native size).
        background: compute on a worker thread (see the module docstring).

    Returns:
        the :class:`Explorer` (shown when ``display``, before its first picture is computed).
    """
    from .models import load_model
    from .threads import apply_interactive_threads

    apply_interactive_threads()
    if isinstance(model, str):
        model = load_model(model, device=device)
    names = None
    if image is None:
        from .toyworld.scenes import CLASS_NAMES

        image, labels = default_scene(image_size or model.native_image_size)
        names = CLASS_NAMES
    session = explorer_session(model, image, cfg, labels=labels, image_size=image_size,
                               prepare=not background, **session_options)
    explorer = Explorer(session, background=background, class_names=names)
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
