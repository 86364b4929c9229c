"""The explorer's widgets and pictures, built for :class:`emerdiff_lab.widgets.Explorer`: its
layout (two columns that fit a 1366x768 laptop screen), the cell picker, the segmentation
panel, the stale marking, the progress line and the small picture helpers."""

from __future__ import annotations

import time

import numpy as np
import torch

from .colours import legend_html, mask_colour, mask_entries

# lambda values the slider steps through (1-2-5 per decade); the text box takes any value.
LAMBDA_STEPS = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 300.0)
SCALES = ("shared scale", "own max")
# A picture that belongs to the previous request is dimmed until the new one is drawn.
STYLE = """<style>
.edl-stale img, img.edl-stale { opacity: 0.35; transition: opacity 0.15s; }
.edl-explorer .widget-label { min-width: 0; }
</style>"""


def short_layer(layer: str) -> str:
    parts = layer.split(".")
    return f"{parts[0]}.{parts[1]} attn {parts[3]}" if len(parts) > 3 else layer


def to_uint8(image: torch.Tensor) -> np.ndarray:
    return (image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy() * 255).round() \
        .astype(np.uint8)


def blend(image: torch.Tensor, heat: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """(H, W, 3) uint8 heat map blended over the (3, H, W) image, (H, W, 3) uint8: where the
    change is small the image shows through, darkened; where it is large the heat map wins."""
    from .plotting import to_numpy_image

    rgb = to_numpy_image(image) * 255
    return (rgb * (1 - alpha) + heat.astype(np.float32) * alpha).round().astype(np.uint8)


def nearest_step(value: float) -> float:
    """The :data:`LAMBDA_STEPS` value nearest ``value`` on a log scale."""
    return min(LAMBDA_STEPS, key=lambda s: abs(np.log(s) - np.log(max(value, 1e-9))))


class Progress:
    """Reports a request's denoiser calls (the session's ``on_progress``) to a text widget and,
    optionally, a progress bar, at most every ``every`` seconds (and always at the end)."""

    def __init__(self, show, bar=None, every: float = 0.15):
        self.show, self.bar, self.every = show, bar, every
        self.start = time.perf_counter()
        self._last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        if done < total and now - self._last < self.every:
            return
        self._last = now
        if self.bar is not None:
            self.bar.max, self.bar.value = max(1, total), done
        self.show(done, total, now - self.start)


def cell_buttons(explorer):
    """The picker: one button per feature cell in its k-means mask's colour."""
    import ipywidgets as w

    h, wd = explorer.grid
    size = max(9, min(14, 224 // max(h, wd)))
    explorer._cell_colors = [["#{:02x}{:02x}{:02x}".format(*mask_colour(int(m))) for m in row]
                             for row in explorer.lowres.tolist()]
    buttons = []
    for i in range(h):
        for j in range(wd):
            button = w.Button(description="", tooltip=f"cell ({i}, {j}), mask "
                                                      f"{int(explorer.lowres[i, j])}",
                              layout=w.Layout(width=f"{size}px", height=f"{size}px",
                                              padding="0", margin="0"))
            button.style.button_color = explorer._cell_colors[i][j]
            button.on_click(lambda _, i=i, j=j: explorer._on_cell_click(i, j))
            buttons.append(button)
    explorer._buttons = buttons
    return w.GridBox(buttons, layout=w.Layout(
        grid_template_columns=f"repeat({wd}, {size}px)", grid_gap="1px"))


def mask_swatches(num_masks: int, selected: int | None) -> str:
    return legend_html(mask_entries(num_masks), title="masks:", css="edl-mask-swatches",
                       selected=None if selected is None else f"mask {selected}")


def titled(view, text: str, css: str = ""):
    import ipywidgets as w

    label = w.HTML(f"<b>{text}</b>", layout=w.Layout(width="auto"))
    if css:
        label.add_class(css)
    return w.VBox([label, view])


def segment_panel(explorer):
    """The whole segmentation: naive upsampling, EmerDiff, truth (or the image), the class
    legend and the status line; hidden until "Segment" is first pressed."""
    import ipywidgets as w

    truth = "ground truth" if explorer.session.truth is not None else "image (no labels)"
    views = w.GridBox([titled(explorer.naive_view, "naive upsampling"),
                       titled(explorer.emerdiff_view, "EmerDiff"),
                       titled(explorer.truth_view, truth)],
                      layout=w.Layout(grid_template_columns="repeat(2, max-content)",
                                      grid_gap="4px 8px"))
    panel = w.VBox([explorer.segment_status, views, explorer.class_legend])
    panel.add_class("edl-segmentation")
    panel.layout.display = "none"
    return panel


def layout(explorer):
    """Two columns: the controls and the picker on the left; on the right, tabs for the one
    region's pictures and the whole segmentation. About 560 px tall and 900 px wide."""
    import ipywidgets as w

    e = explorer
    controls = w.VBox([e.mode, e.row, e.col, w.HBox([e.mask]), e.strength_slider, e.strength,
                       e.timestep, e.layer, e.placement, e.injection, e.overlay, e.scale,
                       w.HBox([e.segment_button, e.segment_progress])],
                      layout=w.Layout(width="300px"))
    picker = w.VBox([w.HTML("<b>click a cell</b> (colour: its k-means mask)"), e.cells,
                     e.mask_swatches], layout=w.Layout(width="235px"))
    region = w.VBox([
        w.GridBox([titled(e.image_view, "image, grid, selection"),
                   titled(e.diff_view, "difference ||I- - I+||", "edl-diff-title"),
                   titled(e.plus_view, "I+ (offset +lambda)"),
                   titled(e.minus_view, "I- (offset -lambda)")],
                  layout=w.Layout(grid_template_columns="repeat(2, max-content)",
                                  grid_gap="4px 8px")),
        e.colorbar, e.note])
    e.tabs = w.Tab(children=[region, w.VBox([e.segment_hint, e.segment_panel])])
    e.tabs.set_title(0, "one region")
    e.tabs.set_title(1, "whole segmentation")
    left = w.VBox([w.HBox([controls, picker])])
    root = w.VBox([w.HTML(STYLE), e.status, w.HBox([left, e.tabs])])
    root.add_class("edl-explorer")
    return root


def placeholder(size: int) -> np.ndarray:
    """A mid-grey square for a view that has nothing to show yet."""
    return np.full((size, size, 3), 128, dtype=np.uint8)


def build_controls(e) -> None:
    """Makes the explorer's controls and views as attributes of ``e`` (see
    :class:`emerdiff_lab.widgets.Explorer` for their names)."""
    import ipywidgets as w

    from .plotting import png_bytes
    from .scales import SHARED_VMAX, colorbar_html

    display_size = e.display_size
    cfg, (h, wd) = e.cfg, e.grid
    wide = {"description_width": "70px"}
    e.mode = w.ToggleButtons(options=["cell", "mask"], value="cell", description="region",
                             style={"button_width": "60px", **wide})
    e.row = w.IntSlider(value=h // 2, min=0, max=h - 1, description="row", style=wide)
    e.col = w.IntSlider(value=wd // 2, min=0, max=wd - 1, description="column",
                        style=wide)
    e.mask = w.Dropdown(options=[(f"mask {i}", i) for i in range(e.num_masks)],
                        value=int(e.lowres[h // 2, wd // 2]), description="mask",
                        style=wide, layout=w.Layout(width="170px"))
    e.mask_swatches = w.HTML(mask_swatches(e.num_masks, e.mask.value))
    e.strength = w.BoundedFloatText(value=float(cfg.modulation_strength), min=1e-3,
                                    max=1e4, description="λ (exact)", style=wide,
                                    layout=w.Layout(width="170px"))
    e.strength_slider = w.SelectionSlider(
        options=LAMBDA_STEPS, value=nearest_step(cfg.modulation_strength),
        description="λ steps", style=wide, readout=False)
    e.timestep = w.SelectionSlider(options=e.timesteps, style=wide,
                                   value=int(cfg.modulation_timestep), description="t_m")
    e.layer = w.Dropdown(options=[(short_layer(n), n) for n in e.layers],
                         value=e.default_layer, description="layer", style=wide)
    e.injection = w.Checkbox(value=bool(cfg.attention_injection), indent=False,
                             description="attention injection")
    e.placement = w.Dropdown(options=["after_projection", "before_projection"],
                             value=cfg.offset_placement, description="offset", style=wide)
    e.overlay = w.Checkbox(value=False, indent=False, description="map over the image")
    e.scale = w.ToggleButtons(options=SCALES, value=SCALES[0],
                              description="map scale",
                              style={"button_width": "100px", **wide})
    e.segment_button = w.Button(
        description="Segment", button_style="primary", icon="th",
        tooltip="perturb every k-means mask with the current setting and assemble the "
                "segmentation (all masks in one batch per denoising step; cached per "
                "setting)")
    e.segment_button.on_click(lambda _: e.segment(wait=False))
    e.segment_progress = w.IntProgress(value=0, min=0, max=1,
                                       layout=w.Layout(width="150px", display="none"))
    e.cells = cell_buttons(e)
    for name in ("image", "plus", "minus", "diff", "seg_naive", "seg_emerdiff",
                 "seg_truth"):
        view = w.Image(format="png", value=png_bytes(placeholder(8), display_size))
        view.add_class(f"edl-{name.replace('_', '-')}")
        view.layout.width = f"{display_size}px"
        setattr(e, f"{name.removeprefix('seg_')}_view", view)
    e.status, e.note = w.HTML(), w.HTML()
    e.colorbar = w.HTML(colorbar_html(SHARED_VMAX))
    e.segment_status = w.HTML("press <b>Segment</b> to compute the whole segmentation")
    e.segment_hint = w.HTML("the segmentation of the current setting appears here "
                            "when <b>Segment</b> is pressed")
    e.class_legend = w.HTML()
    for widget, css in ((e.segment_button, "edl-segment"), (e.status, "edl-status"),
                        (e.segment_status, "edl-seg-status"),
                        (e.segment_progress, "edl-seg-progress"),
                        (e.colorbar, "edl-colorbar-box"), (e.note, "edl-note"),
                        (e.class_legend, "edl-class-legend")):
        widget.add_class(css)


def draw_segmentation(e, view, options: dict) -> None:
    """Draws ``view`` (a :class:`emerdiff_lab.widgets.SegmentationView`) in ``e``'s panel:
    every mask in its matched class's colour, the truth, the class legend, the scores."""
    from .colours import class_colours, class_entries
    from .plotting import matched_mapping, png_bytes

    truth = e.session.truth
    mapping = None if truth is None else matched_mapping(view.labels, truth)
    size = e.display_size
    e.naive_view.value = png_bytes(class_colours(view.naive, mapping), size)
    e.emerdiff_view.value = png_bytes(class_colours(view.labels, mapping), size)
    e.truth_view.value = png_bytes(
        class_colours(truth) if truth is not None else to_uint8(e.session.pixels),
        size)
    shown = [] if truth is None else truth.unique().tolist()
    unmatched = mapping is not None and bool((mapping[view.labels.unique().numpy()] < 0)
                                              .any())
    e.class_legend.value = legend_html(
        class_entries(shown, e.class_names, unmatched=unmatched), title="classes:") \
        if truth is not None else "masks drawn in the mask colours (no labels to match)"
    where = "from cache" if view.seconds == 0 else f"computed in {view.seconds:.1f} s"
    if truth is None:
        scores = "no labels for this image: nothing to score (right: the image)"
    else:
        scores = (f"mIoU <b>EmerDiff {view.miou:.3f}</b> vs naive {view.naive_miou:.3f} "
                  f"({view.miou - view.naive_miou:+.3f}); boundary F-score (2 px) "
                  f"<b>EmerDiff {view.bf2:.3f}</b> vs naive {view.naive_bf2:.3f} "
                  f"({view.bf2 - view.naive_bf2:+.3f})")
    e.segment_status.value = (
        f"{scores}; lambda={options['strength']:g}, t_m={options['timestep']}, "
        f"{short_layer(options['layer'])}, injection "
        f"{'on' if options['injection'] else 'off'} ({where}). Each mask in the colour of "
        f"the class it is matched to.")

