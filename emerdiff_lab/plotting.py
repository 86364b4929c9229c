"""Figures of EmerDiff results: matplotlib/seaborn helpers that take maps, labels and images
directly.

Every helper takes plain tensors or arrays (images (3, H, W) in [0, 1], labels (H, W) ints, maps
(H, W) floats) and draws onto matplotlib axes. Figures made with random weights must say so:
:func:`model_tag` words the label, :func:`suptitle` puts it in the title, and :func:`save_figure`
refuses to write a random-weight figure whose title does not carry it.
"""

from __future__ import annotations

import io as _io
from pathlib import Path

import numpy as np
import torch

from .colours import NO_CLASS_COLOUR, class_colours, mask_colours
from .io import atomic_file

RANDOM_WEIGHTS_TAG = "RANDOM WEIGHTS: mechanics only, no semantics"


# ----------------------------------------------------------------------------------------- labels
def model_tag(model_or_result) -> str:
    """A short description of where a figure's numbers came from, for its title.

    Accepts an ``EmerDiffModel``, a ``Segmentation`` or a provenance dict. Random weights give
    ``"tiny model, RANDOM WEIGHTS: mechanics only, no semantics"``.
    """
    model_id, random = _source(model_or_result)
    if random:
        return f"{model_id} model, {RANDOM_WEIGHTS_TAG}"
    if model_id == "toyworld":
        return "toyworld: small pixel-space model trained on synthetic toy scenes"
    return model_id


def is_random(model_or_result) -> bool:
    return _source(model_or_result)[1]


def suptitle(fig, title: str, model_or_result) -> None:
    """Sets the figure's title to ``title`` plus :func:`model_tag` on a second line."""
    fig.suptitle(f"{title}\n[{model_tag(model_or_result)}]", fontsize=11)


def _source(obj) -> tuple[str, bool]:
    if isinstance(obj, dict):
        return str(obj.get("model_id", "unknown")), bool(obj.get("random_weights", False))
    provenance = getattr(obj, "provenance", None)
    if isinstance(provenance, dict):
        return _source(provenance)
    if hasattr(obj, "random_weights") and hasattr(obj, "model_id"):
        return str(obj.model_id), bool(obj.random_weights)
    raise ValueError(f"expected an EmerDiffModel, a Segmentation or a provenance dict, got "
                     f"{type(obj).__name__}")


def save_figure(fig, path: str | Path, model_or_result, *, table=None, dpi: int = 90) -> Path:
    """Writes ``fig`` as PNG (and ``table``, a pandas DataFrame, as CSV beside it).

    Raises:
        ValueError: the figure comes from random weights and its title does not say so.
    """
    path = Path(path).with_suffix(".png")
    if is_random(model_or_result):
        titles = [fig._suptitle.get_text() if fig._suptitle is not None else ""]
        titles += [ax.get_title() for ax in fig.axes]
        if not any("random weights" in t.lower() for t in titles):
            raise ValueError(f"figure {path.name} comes from random weights but its title does "
                             f"not say so; call emerdiff_lab.plotting.suptitle(fig, title, model)")
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png", dpi=dpi, bbox_inches="tight")
    if table is not None:
        with atomic_file(path.with_suffix(".csv"), "w", newline="") as handle:
            table.to_csv(handle, index=False)
    return path


# ----------------------------------------------------------------------------- array conversions
def to_numpy_image(image) -> np.ndarray:
    """(3, H, W) tensor / (H, W, 3) array / PIL image -> (H, W, 3) float in [0, 1]."""
    if hasattr(image, "convert"):
        return np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu()
        if image.ndim == 3 and image.shape[0] == 3:
            image = image.permute(1, 2, 0)
        image = image.numpy()
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (3, H, W) or (H, W, 3), got shape {image.shape}")
    return np.clip(image.astype(np.float32), 0, 1)


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def pca_rgb(features) -> np.ndarray:
    """(h, w, C) features -> (h, w, 3) float in [0, 1]: the first three principal components.

    Each component is min-max scaled to [0, 1] and its sign fixed (largest loading positive), so
    the colours are reproducible. Fewer than three components (C < 3 or too few cells) are padded
    with zeros.
    """
    feats = torch.as_tensor(_numpy(features)).float()
    if feats.ndim != 3:
        raise ValueError(f"features must be (h, w, C), got shape {tuple(feats.shape)}")
    h, w, c = feats.shape
    x = feats.reshape(h * w, c)
    x = x - x.mean(dim=0, keepdim=True)
    _, _, vt = torch.linalg.svd(x.double(), full_matrices=False)
    components = vt[:3].float()
    signs = torch.sign(components.gather(1, components.abs().argmax(dim=1, keepdim=True)))
    projected = x @ (components * signs).T
    low, high = projected.min(dim=0).values, projected.max(dim=0).values
    scaled = (projected - low) / (high - low).clamp(min=1e-12)
    out = torch.zeros(h * w, 3)
    out[:, :scaled.shape[1]] = scaled
    return out.reshape(h, w, 3).numpy()


def heatmap_rgb(values, cmap: str = "inferno", vmax: float | None = None) -> np.ndarray:
    """(H, W) map -> (H, W, 3) uint8 through a matplotlib colormap (0 to ``vmax``, default max)."""
    import matplotlib

    values = _numpy(values).astype(np.float32)
    if values.ndim != 2:
        raise ValueError(f"a heat map must be (H, W), got shape {values.shape}")
    top = float(values.max()) if vmax is None else float(vmax)
    normalised = np.clip(values / top, 0, 1) if top > 0 else np.zeros_like(values)
    return (matplotlib.colormaps[cmap](normalised)[..., :3] * 255).round().astype(np.uint8)


def grid_image(image, grid_shape: tuple[int, int], region=None, lowres_labels=None, *,
               display_size: int = 256, alpha: float = 0.45) -> np.ndarray:
    """The image with the feature grid drawn on it: (S, S, 3) uint8 at ``display_size``.

    Args:
        image: (3, H, W) in [0, 1] (or anything :func:`to_numpy_image` takes).
        grid_shape: (h, w) of the feature grid (16x16 for SD at 512 px).
        region: optional (h, w) bool; its cells are tinted cyan and outlined.
        lowres_labels: optional (h, w) k-means masks; tinted with the mask palette.
    """
    from PIL import Image

    rgb = (to_numpy_image(image) * 255).round().astype(np.uint8)
    h, w = grid_shape
    height = display_size
    width = round(display_size * rgb.shape[1] / rgb.shape[0])
    rgb = np.asarray(Image.fromarray(rgb).resize((width, height), Image.NEAREST
                                                 if rgb.shape[0] < height else Image.BILINEAR))
    out = rgb.astype(np.float32)
    rows = (np.arange(height) * h // height)
    cols = (np.arange(width) * w // width)
    if lowres_labels is not None:
        colors = mask_colours(lowres_labels)[rows[:, None], cols[None, :]]
        out = out * (1 - alpha) + colors * alpha
    if region is not None:
        inside = _numpy(region).astype(bool)[rows[:, None], cols[None, :]]
        out[inside] = out[inside] * (1 - alpha) + np.array([0, 255, 255]) * alpha
        edge = inside ^ _erode(inside)
        out[edge] = (0, 255, 255)
    for i in range(1, h):
        out[round(i * height / h), :] = out[round(i * height / h), :] * 0.4 + 255 * 0.6
    for j in range(1, w):
        out[:, round(j * width / w)] = out[:, round(j * width / w)] * 0.4 + 255 * 0.6
    return out.clip(0, 255).round().astype(np.uint8)


def _erode(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, constant_values=False)
    return (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1]
            & padded[1:-1, :-2] & padded[1:-1, 2:])


UNMATCHED_COLOUR = NO_CLASS_COLOUR  # a mask the matching left over: no class colour is black


def label_colours(labels, mapping=None) -> np.ndarray:
    """(H, W) class ids -> (H, W, 3) uint8 in the class palette; with ``mapping`` (cluster ->
    class, -1 unmatched) cluster ids drawn in their matched class's colour, unmatched black
    (:func:`emerdiff_lab.colours.class_colours`, which says which colour is which)."""
    return class_colours(labels, mapping)


def matched_mapping(pred, truth) -> np.ndarray:
    """(P,) cluster -> class of the Hungarian matching of ``pred`` to ``truth`` (both (H, W)
    ints; 255 in ``truth`` ignored), for :func:`label_colours`. A cluster matched to no class,
    or to a class absent from ``truth``, maps to -1 (why: a spare mask drawn in the colour of
    a class the image does not have reads as a wrong class, not as a spare mask)."""
    from .evaluation.metrics import hungarian_miou

    truth = _numpy(truth)
    mapping = hungarian_miou(_numpy(pred), truth, ignore_index=255).mapping
    return np.where(np.isin(mapping, truth[truth != 255]), mapping, -1)


def png_bytes(array: np.ndarray, display_size: int | None = None) -> bytes:
    """(H, W, 3) uint8 -> PNG bytes, upscaled (nearest) so the shorter side is ``display_size``."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(array))
    if display_size and min(image.size) < display_size:
        factor = display_size / min(image.size)
        image = image.resize((round(image.width * factor), round(image.height * factor)),
                             Image.NEAREST)
    buffer = _io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------- axes primitives
def show_image(ax, image, title: str | None = None) -> None:
    ax.imshow(to_numpy_image(image))
    _clean(ax, title)


def show_labels(ax, labels, image=None, title: str | None = None, alpha: float = 0.55, *,
                classes: bool = False) -> None:
    """Mask ids in the mask palette (``classes``: class ids in the class palette), blended over
    ``image`` when given (same H, W); :mod:`emerdiff_lab.colours` keeps the two apart."""
    colors = (class_colours(labels) if classes else mask_colours(labels)).astype(np.float32) / 255
    if image is not None:
        colors = to_numpy_image(image) * (1 - alpha) + colors * alpha
    ax.imshow(colors, interpolation="nearest")
    _clean(ax, title)


def show_heatmap(ax, values, title: str | None = None, cmap: str = "inferno",
                 colorbar: bool = False):
    handle = ax.imshow(_numpy(values), cmap=cmap, vmin=0)
    _clean(ax, title)
    if colorbar:
        ax.figure.colorbar(handle, ax=ax, fraction=0.046, pad=0.04)
    return handle


def outline_region(ax, region, image_size: int, color: str = "cyan") -> None:
    """Outlines the cells of an (h, w) bool region on axes showing an image of ``image_size``."""
    from matplotlib.patches import Rectangle

    region = _numpy(region).astype(bool)
    h, w = region.shape
    cell_h, cell_w = image_size / h, image_size / w
    for i, j in zip(*np.nonzero(region)):
        ax.add_patch(Rectangle((j * cell_w - 0.5, i * cell_h - 0.5), cell_w, cell_h, fill=False,
                               edgecolor=color, linewidth=1.2))


def draw_grid(ax, grid_shape: tuple[int, int], image_size: int, color: str = "white") -> None:
    h, w = grid_shape
    for i in range(1, h):
        ax.axhline(i * image_size / h - 0.5, color=color, linewidth=0.4, alpha=0.6)
    for j in range(1, w):
        ax.axvline(j * image_size / w - 0.5, color=color, linewidth=0.4, alpha=0.6)


def _clean(ax, title) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


# -------------------------------------------------------------------------------- whole figures
def plot_perturbations(image, perturbations, *, model, title: str = "Perturbing one sub-region",
                       amplify: bool = False):
    """Figure 3: one row per region: image with the region outlined, I+, I-, |I- - I+| (every
    row on one shared scale with a colour bar, each titled with its own largest change), and
    with ``amplify`` a fifth panel, I- - I+ amplified (:func:`emerdiff_lab.scales.amplified`),
    for changes too small to see.

    Args:
        image: (3, S, S) the image the model saw.
        perturbations: list of :class:`emerdiff_lab.Perturbation` (each has .region, .plus,
            .minus, .diff).
    """
    import matplotlib.pyplot as plt

    from .scales import amplified, shared_vmax

    size = to_numpy_image(image).shape[0]
    rows, cols = len(perturbations), 5 if amplify else 4
    vmax = shared_vmax(*[p.diff for p in perturbations])
    fig, axes = plt.subplots(rows, cols, figsize=(2.5 * cols, 2.6 * rows + 0.6), squeeze=False)
    for row, pert in zip(axes, perturbations):
        show_image(row[0], image, "region (cyan)")
        draw_grid(row[0], tuple(pert.region.shape), size)
        outline_region(row[0], pert.region, size)
        show_image(row[1], pert.plus, "I+ (offset +lambda)")
        show_image(row[2], pert.minus, "I- (offset -lambda)")
        handle = show_heatmap(row[3], pert.diff, f"||I- - I+||, max {float(pert.diff.max()):.4f}",
                              colorbar=True)
        handle.set_clim(0, vmax)
        if amplify:
            picture, gain = amplified(pert.plus, pert.minus)
            show_image(row[4], picture, f"I- - I+, x{gain:.0f} (grey: 0)")
    suptitle(fig, title, model)
    fig.tight_layout()
    return fig


def plot_pipeline(image, features, lowres_labels, reference, diff_maps, labels, *, model,
                  num_maps: int = 5, title: str = "EmerDiff pipeline"):
    """Figure 2. Top row: input, features (PCA to RGB), k-means masks, unmodulated
    reconstruction, assembled labels. Bottom row: difference maps of the first ``num_maps`` masks,
    each titled with the mask's colour index so it can be matched to the k-means panel."""
    import matplotlib.pyplot as plt

    num_maps = max(1, min(num_maps, len(diff_maps)))
    cols = max(5, num_maps)
    fig, axes = plt.subplots(2, cols, figsize=(2.5 * cols, 6.4))
    show_image(axes[0, 0], image, "1. input")
    axes[0, 1].imshow(pca_rgb(features), interpolation="nearest")
    _clean(axes[0, 1], f"2. features {tuple(features.shape[:2])} PCA->RGB")
    show_labels(axes[0, 2], lowres_labels,
                title=f"3. k-means masks (K={int(lowres_labels.max()) + 1})")
    show_image(axes[0, 3], reference, "4. unmodulated denoising")
    show_labels(axes[0, 4], labels, image, "6. labels = argmax of maps")
    for ax in axes[0, 5:]:
        ax.axis("off")
    for i in range(num_maps):
        show_heatmap(axes[1, i], diff_maps[i], f"5. difference map, mask {i}")
    for ax in axes[1, num_maps:]:
        ax.axis("off")
    suptitle(fig, title, model)
    fig.tight_layout()
    return fig


def plot_label_rows(rows, columns: list[str], *, model, title: str, cell: float = 2.4):
    """A grid of images and label maps: ``rows`` is a list of lists of (kind, data, image) where
    kind is "image", "labels" or "heatmap" (``image`` blends labels over it, may be None)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(rows), len(columns), figsize=(cell * len(columns),
                                                               (cell + 0.3) * len(rows) + 0.8),
                             squeeze=False)
    for r, row in enumerate(rows):
        for c, (kind, data, image) in enumerate(row):
            ax = axes[r, c]
            name = columns[c] if r == 0 else None
            if kind == "image":
                show_image(ax, data, name)
            elif kind == "labels":
                show_labels(ax, data, image, name)
            elif kind == "heatmap":
                show_heatmap(ax, data, name)
            elif kind == "empty":
                ax.axis("off")
            else:
                raise ValueError(f"unknown cell kind {kind!r}")
    suptitle(fig, title, model)
    fig.tight_layout()
    return fig


def plot_paired_differences(summary, *, model, title: str = "Ablations"):
    """One panel per ablation: each setting's paired mIoU difference to the default, mean ±
    standard error over images (``summary`` from
    :func:`emerdiff_lab.figures.paired_to_default`: columns ablation, value, is_default, mean,
    sem, n). The default sits at 0 and is drawn as a star; the dashed line is "no change"."""
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(summary["ablation"]))
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.3 * cols, 2.7 * rows + 0.9), squeeze=False,
                             sharey=True)
    for ax, name in zip(axes.flat, names):
        part = summary[summary["ablation"] == name].reset_index(drop=True)
        x = np.arange(len(part))
        ax.axhline(0, color="0.5", linestyle="--", linewidth=0.8)
        ax.errorbar(x, part["mean"], yerr=part["sem"], fmt="D", color="C0", capsize=3)
        for i, row in part.iterrows():
            if row["is_default"]:
                ax.plot([i], [0], marker="*", color="C3", markersize=14, zorder=5)
        ax.set_xticks(x, part["value"].astype(str), fontsize=8, rotation=20)
        ax.set_title(f"{name} (n = {int(part['n'].max())})", fontsize=9)
    for ax in axes[:, 0]:
        ax.set_ylabel("mIoU minus default's\n(mean ± s.e., paired)", fontsize=8)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    suptitle(fig, title, model)
    fig.tight_layout()
    return fig


def plot_method_scores(per_image, *, model, title: str, metric="miou", order=None,
                       labels=None):
    """Per-image scores of every method (grey dots, one line per image) with the mean ±
    standard error (``per_image``: columns image, method, ``metric``). ``metric`` may be a
    sequence of columns (e.g. ``("miou", "bf2")``): one panel each, side by side; ``labels``
    names them on the y axes ({column: text}, default the column)."""
    import matplotlib.pyplot as plt

    metrics = [metric] if isinstance(metric, str) else list(metric)
    labels = labels or {}
    order = order or list(dict.fromkeys(per_image["method"]))
    fig, axes = plt.subplots(1, len(metrics), figsize=((1.6 * len(order) + 2) * len(metrics),
                                                       3.8), squeeze=False)
    for ax, column in zip(axes[0], metrics):
        wide = per_image.pivot(index="image", columns="method", values=column)[order]
        x = np.arange(len(order))
        for _, row in wide.iterrows():
            ax.plot(x, row.values, color="0.75", linewidth=0.6, marker="o", markersize=2.5,
                    zorder=1)
        mean = wide.mean()
        sem = wide.std(ddof=1) / np.sqrt(len(wide)) if len(wide) > 1 else mean * 0
        ax.errorbar(x, mean, yerr=sem, fmt="D", color="C0", capsize=4, zorder=3,
                    label="mean ± s.e.")
        for i, m in enumerate(mean):
            ax.annotate(f"{m:.3f}", (i, m), textcoords="offset points", xytext=(8, -3),
                        fontsize=8)
        ax.set_xticks(x, order, fontsize=8, rotation=15)
        ax.set_ylabel(f"per-image {labels.get(column, column)} (n = {len(wide)})")
        ax.legend(fontsize=8, loc="lower left")
    suptitle(fig, title, model)
    fig.tight_layout()
    return fig


def plot_per_class(per_class, *, model, title: str, order=None):
    """Mean Hungarian-matched IoU per ground-truth class and method, ± standard error over the
    images where the class occurs (``per_class``: columns name, method, iou); the number of
    such images is written under each class."""
    import matplotlib.pyplot as plt

    order = order or list(dict.fromkeys(per_class["method"]))
    classes = list(per_class.groupby("name")["iou"].mean().sort_values().index)
    stats = per_class.groupby(["name", "method"])["iou"].agg(["mean", "sem", "count"])
    fig, ax = plt.subplots(figsize=(1.1 * len(classes) + 2.5, 3.8))
    width = 0.8 / len(order)
    for j, method in enumerate(order):
        values = [stats.loc[(c, method)] if (c, method) in stats.index else None
                  for c in classes]
        x = np.arange(len(classes)) + (j - (len(order) - 1) / 2) * width
        ax.bar(x, [v["mean"] if v is not None else 0 for v in values], width,
               yerr=[v["sem"] if v is not None and v["count"] > 1 else 0 for v in values],
               label=method, capsize=1.5, error_kw={"linewidth": 0.6})
    counts = per_class.drop_duplicates(["image", "name"]).groupby("name").size()
    ax.set_xticks(np.arange(len(classes)),
                  [f"{c}\n(n = {counts.get(c, 0)})" for c in classes], fontsize=8)
    ax.set_ylabel("IoU (mean ± s.e.)")
    ax.legend(fontsize=7, ncol=min(5, len(order)), loc="upper left")
    suptitle(fig, title, model)
    fig.tight_layout()
    return fig


def plot_metric_bars(table, *, model, x: str, y: str, hue: str, title: str):
    """Grouped bars of ``y`` per ``x`` and ``hue`` (e.g. mIoU per image, naive vs EmerDiff)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(max(5, 0.9 * table[x].nunique() + 2), 3.6))
    sns.barplot(data=table, x=x, y=y, hue=hue, ax=ax)
    ax.tick_params(axis="x", rotation=30, labelsize=8)
    ax.set_xlabel("")
    suptitle(fig, title, model)
    fig.tight_layout()
    return fig
