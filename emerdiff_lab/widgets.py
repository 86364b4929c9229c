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
"""

from __future__ import annotations

import time
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


def explorer_session(model, image, cfg=None, *, labels=None, image_size: int | None = None,
                     **session_options):
    """A :class:`emerdiff_lab.session.Session` ready for the explorer: its trajectory reaches
    the top of the schedule (so that every t_m of the slider is served without inverting
    again) and the default setting's reference pass is recorded up front."""
    from .session import Session

    session = Session(model, image, labels, cfg=cfg, image_size=image_size, **session_options)
    session.inversion(session.cfg, depth=max(session.timesteps()))
    session.reference_pass(session.cfg)
    return session


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

    What the controls select is read from ``session`` (a :func:`explorer_session`): ``grid``,
    ``lowres`` (the k-means masks of the session's config), ``num_masks``, ``timesteps``,
    ``layers``, ``default_layer``; ``hits`` and ``misses`` count perturbations asked for.
    """

    def __init__(self, session, *, display_size: int = DISPLAY_SIZE):
        import ipywidgets as w

        self.session = session
        self.display_size = display_size
        self.cfg = session.cfg
        self.grid = session.region_grid()
        self.lowres = session.masks()
        self.num_masks = int(self.lowres.max()) + 1
        self.timesteps = session.timesteps()
        self.layers = session.candidate_layers()
        self.default_layer = session.resolved().modulation_layer
        self.hits = self.misses = 0
        self.last_seconds = 0.0
        cfg, (h, wd) = self.cfg, self.grid
        self.mode = w.ToggleButtons(options=["cell", "mask"], value="cell",
                                    description="region")
        self.row = w.IntSlider(value=h // 2, min=0, max=h - 1, description="row")
        self.col = w.IntSlider(value=wd // 2, min=0, max=wd - 1, description="column")
        self.mask = w.Dropdown(options=[(f"mask {i}", i) for i in range(self.num_masks)],
                               value=int(self.lowres[h // 2, wd // 2]), description="mask")
        self.strength = w.FloatLogSlider(value=float(cfg.modulation_strength), base=10, min=-1,
                                         max=2.5, step=0.1, description="lambda")
        self.timestep = w.SelectionSlider(options=self.timesteps,
                                          value=int(cfg.modulation_timestep), description="t_m")
        self.layer = w.Dropdown(options=[(_short(n), n) for n in self.layers],
                                value=self.default_layer, description="layer")
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
        return SegmentationView(labels, naive, self.session.miou(labels),
                                self.session.miou(naive),
                                0.0 if cached else time.perf_counter() - start)

    # -- state
    def region(self) -> torch.Tensor:
        if self.mode.value == "mask":
            return self.lowres == self.mask.value
        return self.session.cell_region(self.row.value, self.col.value)

    def options(self) -> dict:
        return {"strength": float(self.strength.value), "timestep": int(self.timestep.value),
                "layer": self.layer.value, "injection": bool(self.injection.value),
                "placement": self.placement.value}

    def current(self):
        """The :class:`emerdiff_lab.Perturbation` on display (from the cache)."""
        return self.perturbation(self.region(), **self.options())

    # -- updates
    def _on_change(self, change) -> None:
        if change["owner"] is self.mode and change["new"] == "mask":
            self.mask.value = int(self.lowres[self.row.value, self.col.value])
        self.update()

    def _on_cell_click(self, row: int, col: int) -> None:
        def select():
            self.row.value, self.col.value = row, col
            self.mask.value = int(self.lowres[row, col])

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
        cached = self.is_cached(region, **options)
        start = time.perf_counter()
        pert = self.perturbation(region, **options)
        seconds = time.perf_counter() - start
        size = self.display_size
        self.image_view.value = png_bytes(grid_image(session.pixels, self.grid, region,
                                                     self.lowres if self.mode.value == "mask"
                                                     else None, display_size=size))
        self.plus_view.value = png_bytes(_to_uint8(pert.plus), size)
        self.minus_view.value = png_bytes(_to_uint8(pert.minus), size)
        heat = heatmap_rgb(pert.diff)
        if self.overlay.value:
            heat = _blend(session.pixels, heat)
        self.diff_view.value = png_bytes(heat, size)
        where = "from cache" if cached else f"computed in {seconds:.2f} s"
        self.status.value = (
            f"<b>{model_tag(session.model)}</b><br>"
            f"region: {int(region.sum())} cell(s); max change {float(pert.diff.max()):.4f} "
            f"({where}); cache {self.hits} hits / {self.misses} misses")
        self._paint_cells(region)
        self._show_segmentation()
        self.updates += 1

    # -- the whole segmentation
    def segment(self) -> SegmentationView:
        """Computes (or fetches) the segmentation for the current setting and shows it."""
        self.segment_status.value = "segmenting: every k-means mask perturbed ..."
        view = self.segmentation(**self.options())
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
            if not self.has_segmentation(**options):
                self.segment_status.value = (
                    "<b>out of date:</b> the controls changed since this segmentation; press "
                    "<b>Segment</b> for the current setting")
                return
            view = self.segmentation(**options)
        truth = session.truth
        mapping = None if truth is None else matched_mapping(view.labels, truth)
        size = self.display_size
        self.naive_view.value = png_bytes(label_colours(view.naive, mapping), size)
        self.emerdiff_view.value = png_bytes(label_colours(view.labels, mapping), size)
        self.truth_view.value = png_bytes(
            label_colours(truth) if truth is not None else _to_uint8(session.pixels), size)
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

        h, wd = self.grid
        colors = colorize(self.lowres.numpy())
        size = max(12, min(28, 320 // max(h, wd)))
        self._cell_colors = [[f"#{c[0]:02x}{c[1]:02x}{c[2]:02x}" for c in row] for row in colors]
        buttons = []
        for i in range(h):
            for j in range(wd):
                button = w.Button(description="", tooltip=f"cell ({i}, {j}), mask "
                                                          f"{int(self.lowres[i, j])}",
                                  layout=w.Layout(width=f"{size}px", height=f"{size}px",
                                                  padding="0", margin="0"))
                button.style.button_color = self._cell_colors[i][j]
                button.on_click(lambda _, i=i, j=j: self._on_cell_click(i, j))
                buttons.append(button)
        self._buttons = buttons
        return w.GridBox(buttons, layout=w.Layout(
            grid_template_columns=f"repeat({wd}, {size}px)", grid_gap="1px"))

    def _paint_cells(self, region: torch.Tensor) -> None:
        wd = self.grid[1]
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

        truth = "ground truth" if self.session.truth is not None else \
            "image (no labels)"
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
            self.session.pixels, [self.current()], model=self.session.model,
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
    session = explorer_session(model, image, cfg, labels=labels, image_size=image_size,
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
