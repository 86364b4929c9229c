"""The perturbation explorer: pick a region of the feature grid, set lambda, t_m, the modulated
layer and attention injection, and see I+, I- and the difference map update.

Two layers, so that the logic can be tested without a browser:

- :class:`PerturbationSession` holds one image's features, k-means masks and full inversion, and
  answers ``perturbation(region, ...)`` from a cache (a revisited setting costs nothing);
- :class:`Explorer` is the ipywidgets app on top of it. ``open_explorer()`` builds and shows one
  in a single line.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from .plotting import grid_image, heatmap_rgb, model_tag, png_bytes

DISPLAY_SIZE = 256


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


class PerturbationSession:
    """One image prepared for repeated perturbations.

    Computes once: features and k-means masks (``lowres``), and a full-trajectory inversion, so
    that any t_m on the schedule can be explored. ``perturbation`` caches its results (least
    recently used first out, ``max_entries`` of them).

    Attributes:
        image: (3, S, S) the image the model sees.
        features: (h, w, C); lowres: (h, w) int64 k-means masks.
        grid: (h, w) of the modulation layers' token grid.
        timesteps: the schedule's timesteps, ascending (valid t_m values).
        layers: the cross-attention layers of the semantic block (valid modulated layers).
        hits, misses: cache statistics.
    """

    def __init__(self, model, image, cfg=None, *, image_size: int | None = None,
                 max_entries: int = 64, progress: bool = False):
        from .features import extract_features, kmeans_masks, layer_names
        from .images import load_image
        from .inversion import invert
        from .layers import find_semantic_block

        self.model = model
        self.cfg = cfg or model.default_config
        if image_size is None:
            image_size = int(model.unet.config.sample_size) * model.vae_scale_factor
        self.image = load_image(image, image_size)
        self.image_size = image_size
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
        self.hits = 0
        self.misses = 0
        self.last_seconds = 0.0

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
        result = perturb(self.model, self.inversion, torch.as_tensor(region).bool(), cfg)
        self.last_seconds = time.perf_counter() - start
        self._cache[key] = result
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return result

    def cache_info(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "entries": len(self._cache),
                "max_entries": self.max_entries}


class Explorer:
    """The ipywidgets app. Controls (all public attributes, so code can drive them):

    ``mode`` (ToggleButtons "cell" / "mask"), ``row`` and ``col`` (IntSliders, the selected cell),
    ``mask`` (Dropdown), ``cells`` (a grid of buttons, one per feature cell, coloured by k-means
    mask: clicking selects that cell, or its mask in mask mode), ``strength`` (lambda, log
    slider), ``timestep`` (t_m, selection slider), ``layer`` (Dropdown), ``injection``
    (Checkbox), ``placement`` (Dropdown). Views: ``image_view`` (image, grid and selection),
    ``plus_view``, ``minus_view``, ``diff_view`` (PNG ``ipywidgets.Image``), ``status`` (HTML).
    Every change recomputes through the session's cache.
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
        self.cells = self._cell_buttons()
        self.image_view = w.Image(format="png")
        self.plus_view = w.Image(format="png")
        self.minus_view = w.Image(format="png")
        self.diff_view = w.Image(format="png")
        self.status = w.HTML()
        self.status.add_class("edl-status")
        for view, css in ((self.image_view, "edl-image"), (self.plus_view, "edl-plus"),
                          (self.minus_view, "edl-minus"), (self.diff_view, "edl-diff")):
            view.add_class(css)
            view.layout.width = f"{display_size}px"
        for control, css in ((self.row, "edl-row"), (self.col, "edl-col"),
                             (self.strength, "edl-strength"), (self.timestep, "edl-timestep"),
                             (self.mask, "edl-mask"), (self.layer, "edl-layer"),
                             (self.injection, "edl-injection"), (self.mode, "edl-mode"),
                             (self.placement, "edl-placement")):
            control.add_class(css)
            control.observe(self._on_change, names="value")
        self.updates = 0
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
        self.diff_view.value = png_bytes(heatmap_rgb(pert.diff), size)
        info = session.cache_info()
        where = "from cache" if cached else f"computed in {seconds:.2f} s"
        self.status.value = (
            f"<b>{model_tag(session.model)}</b><br>"
            f"region: {int(region.sum())} cell(s); max change {float(pert.diff.max()):.4f} "
            f"({where}); cache {info['hits']} hits / {info['misses']} misses")
        self._paint_cells(region)
        self.updates += 1

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
                           self.timestep, self.layer, self.injection, self.placement])
        picker = w.VBox([w.HTML("<b>click a cell</b> (colour = k-means mask)"), self.cells])
        views = w.HBox([titled(self.image_view, "image, grid, selection"),
                        titled(self.plus_view, "I+"), titled(self.minus_view, "I-"),
                        titled(self.diff_view, "difference ||I- - I+||")])
        return w.VBox([self.status, w.HBox([controls, picker]), views])

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


def open_explorer(model="tiny", image=None, cfg=None, *, image_size: int | None = None,
                  device=None, display: bool = True, **session_options) -> Explorer:
    """One line to an explorer: ``open_explorer()`` (tiny model, a bundled photo) or
    ``open_explorer(model, "photo.jpg")``. ``model`` is a loaded model or an id for
    :func:`emerdiff_lab.load_model`. Returns the :class:`Explorer` (shown when ``display``)."""
    from .models import load_model

    if isinstance(model, str):
        model = load_model(model, device=device)
    if image is None:
        image = default_image()
    session = PerturbationSession(model, image, cfg, image_size=image_size, **session_options)
    explorer = Explorer(session)
    if display:
        from IPython.display import display as show

        show(explorer.widget)
    return explorer


def default_image():
    """A bundled photo when the package ships them, else a generated toyworld scene."""
    try:
        from .images import sample_images

        photos = sample_images()
        if photos:
            return next(iter(photos.values()))
    except ImportError:
        pass
    from .toyworld.scenes import generate_scene

    return generate_scene(0, 128)[0]


def _short(layer: str) -> str:
    parts = layer.split(".")
    return f"{parts[0]}.{parts[1]} attn {parts[3]}" if len(parts) > 3 else layer


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy() * 255).round() \
        .astype(np.uint8)
