"""The paper's experiments as tables: EmerDiff against its baselines per image, per class, per
ablation setting, and the failure statistics of Figure 8.

One path from image to numbers: every EmerDiff result comes from one
:class:`emerdiff_lab.session.Session` per (model, image) (:meth:`FigureContext.session`), every
score from :func:`emerdiff_lab.evaluation.metrics.hungarian_miou`. The session computes each stage
once per the settings it reads (a sweep over t_m inverts once, to the deepest t_m; blur and map
normalisation re-assemble stored maps), and keeps raw maps on disk in ``ctx.cache_dir`` keyed by
settings, weights, dtype, device and pixels, so notebooks that score the same scenes (04, 06,
07, and 05's default setting) share them. Beside each mIoU, under the same matching, the
boundary F-scores ``bf1``, ``bf2`` (theta 1 and 2 px at 128 px, scaled with the image) and
``bf2_agnostic`` (:func:`emerdiff_lab.evaluation.metrics.boundary_scores`): how closely each
method's edges follow the true ones, which mIoU barely sees.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
import torch

from ..assembly import assemble
from ..baselines import nearest_upsample, pixel_colour_kmeans, upsample_bilinear
from ..evaluation.metrics import boundary_scores, hungarian_miou, segmentation_scores
from .context import Example, FigureContext

EMERDIFF = "EmerDiff"
NAIVE = "naive bilinear"
MASKS = "k-means masks (low-res)"
COLOUR = "pixel-colour k-means"
CONTROL = "random-weight EmerDiff"
METHODS = (EMERDIFF, NAIVE, MASKS, COLOUR, CONTROL)


# ----------------------------------------------------------------------------- EmerDiff, cached
@dataclass(frozen=True)
class Maps:
    """EmerDiff's low-resolution masks and raw pixel-change maps for one image and setting.

    Attributes:
        lowres: (h, w) int64 k-means masks.
        raw_maps: (K, S, S) float32 maps before blur and normalisation.
        seconds: wall-clock seconds it took to compute them (0 when read from the cache).
    """

    lowres: torch.Tensor
    raw_maps: torch.Tensor
    seconds: float

    def labels(self, cfg) -> torch.Tensor:
        """(S, S) int64 EmerDiff labels under ``cfg``'s blur and map normalisation."""
        return assemble(self.raw_maps, cfg.blur_sigma, cfg.normalize_maps)


def emerdiff_maps(ctx: FigureContext, example: Example, cfg=None, *, model=None,
                  features=None, inversion=None) -> Maps:
    """EmerDiff's masks and raw maps for ``example`` from the example's session
    (:meth:`FigureContext.session`): computed once per setting, kept in memory and on disk.

    Args:
        cfg: settings (default ``ctx.cfg``); blur and map normalisation do not matter here.
        model: another model (the random-weight control); default ``ctx.model``.
        features, inversion: precomputed for this image and ``cfg`` (the caller vouches).
    """
    cfg = cfg or ctx.cfg
    session = ctx.session(example, model)
    session.provide(cfg, features=features, inversion=inversion)
    before = session.cache_info()["computed"].get("raw_maps", 0)
    start = time.perf_counter()
    raw_maps, lowres = session.raw_maps(cfg), session.masks(cfg)
    computed = session.cache_info()["computed"].get("raw_maps", 0) > before
    return Maps(lowres, raw_maps, time.perf_counter() - start if computed else 0.0)


def random_control(ctx: FigureContext):
    """A random-weight model of the same architecture (the evaluation's control), or None when
    the project has none for this model (then the control is left out, and said so)."""
    if ctx.toyworld == "toyworld":
        from ..toyworld.evaluation import random_control as toyworld_control

        return toyworld_control(seed=0)
    if ctx.model.random_weights:
        return None  # the model is itself random: no control to compare with
    print(f"no random-weight control of {ctx.model.model_id!r}'s architecture is available; "
          f"'{CONTROL}' is left out")
    return None


# ------------------------------------------------------------------------ methods on one image
def method_labels(ctx: FigureContext, example: Example, control=None) -> dict[str, torch.Tensor]:
    """Every method's (S, S) labels for one example: EmerDiff, naive bilinear upsampling of the
    same masks, the masks themselves (nearest), k-means of pixel colours (K clusters), and
    EmerDiff with ``control``'s random weights when given."""
    maps = emerdiff_maps(ctx, example)
    size, k = ctx.image_size, ctx.cfg.num_masks
    labels = {EMERDIFF: maps.labels(ctx.cfg), NAIVE: upsample_bilinear(maps.lowres, size),
              MASKS: nearest_upsample(maps.lowres, size),
              COLOUR: pixel_colour_kmeans(example.image, k, ctx.cfg.seed)}
    if control is not None:
        labels[CONTROL] = emerdiff_maps(ctx, example, model=control).labels(ctx.cfg)
    return labels


def compare_methods(ctx: FigureContext, examples: list[Example], control=None, *,
                    class_names=None, progress: bool = True):
    """Scores every method of :func:`method_labels` on every example.

    Returns:
        ``(per_image, per_class, labels)``: a DataFrame with one row per (image, method):
        image, seed (the scene's), method, weights (:func:`weights_fingerprint`), cfg_seed,
        miou, bf1, bf2, bf2_agnostic; a DataFrame with one row per (image, method, class present
        in the image): the same columns with class, name, iou (Hungarian-matched) instead of
        the scores; and {image name: {method: (S, S) labels}} for plotting.
    """
    from tqdm.auto import tqdm

    rows, class_rows, labels = [], [], {}
    num_classes = len(class_names) if class_names is not None else None
    for example in tqdm(examples, desc="methods", disable=not progress):
        if example.labels is None:
            raise ValueError(f"{example.name} has no labels; compare_methods needs labelled "
                             f"images (figures.labelled_examples)")
        labels[example.name] = method_labels(ctx, example, control)
        present = [c for c in example.labels.unique().tolist() if c != 255]
        for method, pred in labels[example.name].items():
            result = hungarian_miou(pred, example.labels, num_classes=num_classes)
            base = {"image": example.name, "seed": example.seed, "method": method,
                    "weights": ctx.weights, "cfg_seed": ctx.cfg.seed}
            rows.append(base | {"miou": result.miou} | boundary_scores(
                pred, example.labels, result.mapping, num_classes=num_classes))
            class_rows += [base | {"class": c, "name": class_names[c] if class_names else str(c),
                                   "iou": float(result.iou[c])} for c in present]
    return pd.DataFrame(rows), pd.DataFrame(class_rows), labels


def method_summary(per_image: pd.DataFrame, reference: str = EMERDIFF,
                   value: str = "miou") -> pd.DataFrame:
    """Mean ± s.e. of each method's per-image ``value`` (a column: "miou", "bf2", ...), and its
    paired difference to ``reference`` (``reference`` minus method; 95% t-interval) with the
    verdict word the interval supports."""
    from ..stats import paired_difference, summarize

    wide = per_image.pivot(index="image", columns="method", values=value)
    rows = []
    for method in [m for m in METHODS if m in wide] + [m for m in wide if m not in METHODS]:
        row = {"method": method, **summarize(wide[method])}
        if method != reference and len(wide) > 1:
            diff = paired_difference(wide[reference], wide[method])
            row |= {f"{reference} minus method": diff.mean, "diff_sem": diff.sem,
                    "ci_low": diff.ci_low, "ci_high": diff.ci_high,
                    "verdict": f"{reference} {diff.verdict} {method}"}
        rows.append(row)
    return pd.DataFrame(rows)


def conclusions(per_image: pd.DataFrame, reference: str = EMERDIFF, metric: str = "mIoU",
                against=None, value: str = "miou") -> list[str]:
    """One computed sentence per baseline (:func:`emerdiff_lab.stats.conclusion`) on the
    per-image column ``value`` (named ``metric`` in the sentence)."""
    from ..stats import conclusion

    wide = per_image.pivot(index="image", columns="method", values=value)
    against = against or [m for m in METHODS if m in wide and m != reference]
    return [conclusion(wide[reference], wide[m], reference, m, metric=metric) for m in against]


# ------------------------------------------------------------------------------------ ablations
# Which sweeps each ablation notebook runs, by the tag in the sweep's name. Two notebooks rather
# than one so that `make figures --jobs 2` can run the two halves of the work side by side.
ABLATION_PARTS = {
    "tables": ("T4", "T5", "T6", "T7", "T8", "T9"),       # notebook 05: the paper's tables
    "layers_and_choices": ("F14", "ours"),               # notebook 09: Figure 14 and our choices
}


def ablation_settings(ctx: FigureContext, part: str = "all") -> list[tuple[str, str, dict]]:
    """The sweeps as (ablation, value label, config changes), the default included in each.

    Paper: number of masks (Table 4), t_f (Table 6), t_m (Table 7), lambda (Table 8),
    attention injection (Table 9), modulated layer x offset placement (Figure 14). Ours: blur
    sigma, map normalisation (post-processing only: free) and feature normalisation. Full mode
    uses the paper's ranges (and the feature layer of Table 5); quick mode (CPU) one alternative
    per sweep, chosen to be informative and cheap, so that 12 scenes fit the time budget.
    Every setting varies ``ctx.ablation_cfg`` (in quick mode a coarser schedule than ``ctx.cfg``;
    see :attr:`FigureContext.ablation_cfg`), and timesteps are snapped onto its schedule.
    ``part``: "all", or a key of :data:`ABLATION_PARTS` ("tables": Tables 4-9;
    "layers_and_choices": Figure 14 and ours).
    """
    if part != "all" and part not in ABLATION_PARTS:
        raise ValueError(f"part must be 'all' or one of {sorted(ABLATION_PARTS)}, got {part!r}")
    settings = _all_ablation_settings(ctx)
    if part == "all":
        return settings
    tags = tuple(f"({tag})" for tag in ABLATION_PARTS[part])
    return [s for s in settings if s[0].endswith(tags)]


def _all_ablation_settings(ctx: FigureContext) -> list[tuple[str, str, dict]]:
    """Every sweep of :func:`ablation_settings`, in the order of the paper's tables."""
    from ..inversion import schedule
    from ..layers import find_semantic_block

    cfg, quick = ctx.ablation_cfg, ctx.quick
    steps = schedule(ctx.model, cfg.num_inference_steps).tolist()

    def snap(values):
        return sorted({min(steps, key=lambda s: abs(s - v)) for v in values})

    block = find_semantic_block(ctx.model.unet)
    cells = block.feature_size(ctx.image_size, ctx.model.vae_scale_factor) ** 2
    layers = block.cross_attention_layers
    from ..features import layer_names

    _, modulation_layer = layer_names(ctx.model, cfg, ctx.image_size)
    def first_other(candidates, default):  # quick mode: one value that is not the default
        return [next(v for v in candidates if v != default)]

    k = cfg.num_masks
    masks = (first_other([k // 2, 2 * k], k) if quick and k >= 4 else [2 * k] if quick
             else [v for v in (10, 20, 30, 40) if v <= cells // 2])
    t_f = snap(first_other(snap([101, 261]), cfg.feature_timestep) if quick
               else [101, 261, 501, 761])
    t_m = snap(first_other(snap([281, 481]), cfg.modulation_timestep) if quick
               else [81, 181, 281, 381, 481, 681, 881])
    lam = [cfg.modulation_strength / 5] if quick else [1.0, 5.0, 10.0, 20.0, 50.0, 100.0]
    blur = sorted({0.0, 2 * cfg.blur_sigma or 1.0} | ({4 * cfg.blur_sigma} if not quick else set()))

    def sweep(name, key, values, label=str):
        values = sorted(set(values) | {getattr(cfg, key)})
        return [(name, label(v), {key: v}) for v in values]

    settings = sweep("number of masks (T4)", "num_masks", masks)
    if not quick:
        settings += [("feature layer (T5)", f"attn {layers.index(n)}", {"feature_layer": n})
                     for n in layers]
    settings += sweep("t_f (T6)", "feature_timestep", t_f)
    settings += sweep("t_m (T7)", "modulation_timestep", t_m)
    settings += sweep("lambda (T8)", "modulation_strength", lam, lambda v: f"{v:g}")
    settings += [("attention injection (T9)", v, {"attention_injection": v == "on"})
                 for v in ("on", "off")]
    placements = ("after_projection", "before_projection")
    other = [n for n in layers if n != modulation_layer]
    combos = [(modulation_layer, p) for p in placements]
    if quick:  # the other layer at the default placement: 2 of the 3 non-default cells
        combos += [(other[0], cfg.offset_placement)] if other else []
    else:
        combos += [(n, p) for n in other for p in placements]
    settings += [("modulated layer x offset (F14)", f"attn {layers.index(n)} {p.split('_')[0]}",
                  {"modulation_layer": n, "offset_placement": p}) for n, p in combos]
    settings += sweep("blur sigma px (ours)", "blur_sigma", blur, lambda v: f"{v:g}")
    settings += [("map / own max (ours)", v, {"normalize_maps": v == "on"})
                 for v in ("off", "on")]
    settings += [("feature normalisation (ours)", v, {"feature_normalization": v})
                 for v in ("l2", "none")]
    return settings


def _resolved(model, cfg, image_size: int):
    """``cfg`` with its layers named (None -> the model's default), so that a setting that names
    the default layer is recognised as the default (and shares its cached maps)."""
    from ..features import layer_names

    feature_layer, modulation_layer = layer_names(model, cfg, image_size)
    return cfg.replace(feature_layer=feature_layer, modulation_layer=modulation_layer)


def _is_default(ctx, cfg) -> bool:
    return _resolved(ctx.model, cfg, ctx.image_size) == _resolved(ctx.model, ctx.ablation_cfg,
                                                                  ctx.image_size)


def ablation_table(ctx: FigureContext, examples: list[Example], settings=None,
                   progress: bool = True) -> pd.DataFrame:
    """Every setting of :func:`ablation_settings` on every example: one row per (ablation,
    value, image) with miou, bf1, bf2 (EmerDiff's mIoU and boundary F-scores), naive_miou and
    naive_bf2 (bilinear upsampling of that setting's masks), is_default, seconds (0 when cached
    or post-processing only), seed, weights, cfg_seed and steps (the schedule's,
    ``ctx.ablation_cfg``'s).

    Work is shared through the example's session: features per (layer, t_f, prompt, seed),
    one inversion to the deepest t_m, maps on disk; blur and map normalisation re-assemble the
    default's maps.
    """
    from tqdm.auto import tqdm

    settings = settings if settings is not None else ablation_settings(ctx)
    rows = []
    bar = tqdm(total=len(examples) * len(settings), desc="ablations", disable=not progress)
    # Last scene first: run beside notebook 04 (``--jobs 2``), which scores the same scenes
    # from the first on, the two meet in the middle and read each other's cached maps instead
    # of computing the default setting twice (when both use the same schedule: not in quick
    # mode, where the sweeps run on a coarser one). The rows come back in the examples' order.
    for example in reversed(examples):
        for ablation, value, changes in settings:
            cfg = ctx.ablation_cfg.replace(**changes)
            maps = emerdiff_maps(ctx, example, cfg)
            ours = segmentation_scores(maps.labels(cfg), example.labels)
            naive = segmentation_scores(upsample_bilinear(maps.lowres, ctx.image_size),
                                        example.labels)
            rows.append({"ablation": ablation, "value": value, "image": example.name,
                         "seed": example.seed, "miou": ours["miou"], "naive_miou": naive["miou"],
                         "bf1": ours["bf1"], "bf2": ours["bf2"], "naive_bf2": naive["bf2"],
                         "is_default": _is_default(ctx, cfg), "seconds": round(maps.seconds, 3),
                         "weights": ctx.weights, "cfg_seed": cfg.seed,
                         "steps": cfg.num_inference_steps})
            bar.update()
    bar.close()
    order = {e.name: i for i, e in enumerate(examples)}
    return pd.DataFrame(rows).sort_values("image", key=lambda c: c.map(order),
                                          kind="stable").reset_index(drop=True)


def paired_to_default(table: pd.DataFrame, score: str = "miou") -> pd.DataFrame:
    """Each setting's per-image ``score`` (a column: "miou", "bf2", ...) minus the default's on
    the same image, summarised: one row per (ablation, value) with the setting's mean ``score``,
    mean, sem, ci_low, ci_high (of the difference), n and the verdict of the setting against the
    default (``emerdiff_lab.stats``). The default rows have difference 0."""
    from ..stats import paired_difference

    default = (table[table.is_default].drop_duplicates("image")
               .set_index("image")[score])
    rows = []
    for (ablation, value), group in table.groupby(["ablation", "value"], sort=False):
        scores = group.set_index("image")[score]
        base = default.loc[scores.index]
        is_default = bool(group.is_default.all())
        row = {"ablation": ablation, "value": value, "is_default": is_default,
               score: float(scores.mean()), "n": int(len(scores))}
        if len(scores) > 1:
            diff = paired_difference(scores.values, base.values)
            row |= {"mean": diff.mean, "sem": diff.sem, "ci_low": diff.ci_low,
                    "ci_high": diff.ci_high,
                    "verdict": "default" if is_default else diff.verdict}
        rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ failure cases
def failure_stats(labels: torch.Tensor, gt: torch.Tensor, *, small_min: int = 4,
                  small_fraction: float = 0.03, uniform_fraction: float = 0.15,
                  class_names=None) -> list[dict]:
    """The two failure modes of Figure 8, measured per ground-truth class of one image.

    For every class present: its pixel share, the best IoU any predicted segment reaches on it
    (``best_iou``: a small part that no segment covers scores low) and how many predicted
    segments cover at least 5% of it (``segments_inside``: a uniform region split in several
    scores high). ``kind`` says "small part" (share < ``small_fraction``, at least ``small_min``
    pixels), "large region" (share > ``uniform_fraction``) or "other". ``class_names`` (a
    sequence indexed by class id) adds a ``name`` column.
    """
    labels, gt = labels.cpu().long(), gt.cpu().long()
    if labels.shape != gt.shape:
        raise ValueError(f"labels {tuple(labels.shape)} and ground truth {tuple(gt.shape)} differ")
    valid = gt != 255
    total = int(valid.sum())
    rows = []
    for cls in gt[valid].unique().tolist():
        region = gt == cls
        size = int(region.sum())
        if size < small_min:
            continue
        inside = labels[region]
        counts = torch.bincount(inside, minlength=int(labels.max()) + 1)
        best = 0.0
        for seg in counts.nonzero().flatten().tolist():
            pred = labels == seg
            best = max(best, float((pred & region).sum()) / float((pred | region).sum()))
        share = size / total
        rows.append({"class": int(cls),
                     **({"name": class_names[cls]} if class_names is not None else {}),
                     "share": round(share, 4), "best_iou": round(best, 4),
                     "segments_inside": int((counts >= 0.05 * size).sum()),
                     "kind": "small part" if share < small_fraction else
                             "large region" if share > uniform_fraction else "other"})
    return rows


def ablation_conclusions(table: pd.DataFrame, metric: str = "mIoU",
                         score: str = "miou") -> list[str]:
    """One computed sentence per non-default setting: the setting against the default on the
    same images (:func:`emerdiff_lab.stats.conclusion`), on the column ``score`` (named
    ``metric`` in the sentence)."""
    from ..stats import conclusion

    default = table[table.is_default].drop_duplicates("image").set_index("image")[score]
    sentences = []
    for (ablation, value), group in table.groupby(["ablation", "value"], sort=False):
        if group.is_default.all() or len(group) < 2:
            continue
        scores = group.set_index("image")[score]
        sentences.append(conclusion(scores.values, default.loc[scores.index].values,
                                    f"{ablation} = {value}", "the default", metric=metric))
    return sentences


def class_names(examples: list[Example]):
    """The class names of the examples' labels (ToyWorld's nine), or None when unknown."""
    if examples and {e.source for e in examples} == {"toyworld test scenes"}:
        from ..toyworld import scenes

        return scenes.CLASS_NAMES  # the latent scenes keep the same nine classes in order
    return None


@dataclass(frozen=True)
class Showcase:
    """The scene and mask a qualitative figure shows, picked by :func:`select_showcase`.

    Attributes:
        example: the chosen example.
        mask: the chosen k-means mask's index.
        gains: DataFrame, one row per (example, mask): image, mask, class, gain.
    """

    example: Example
    mask: int
    gains: pd.DataFrame


def select_showcase(ctx: FigureContext, examples: list[Example]) -> Showcase:
    """Picks what the perturbation figure shows, by a rule rather than by eye: among
    ``examples`` (labelled), the (scene, k-means mask) with the largest gain of EmerDiff over
    naive bilinear upsampling, where a mask's gain is the IoU of EmerDiff's pixels for that mask
    with the class the mask is Hungarian-matched to, minus the same IoU for the naive
    upsampling's pixels. Masks matched to no class are skipped."""
    rows = []
    for example in examples:
        if example.labels is None:
            raise ValueError(f"{example.name} has no labels: select_showcase needs labelled "
                             f"examples")
        maps = emerdiff_maps(ctx, example)
        emerdiff = maps.labels(ctx.cfg)
        naive = upsample_bilinear(maps.lowres, ctx.image_size)
        mapping = hungarian_miou(emerdiff, example.labels).mapping
        gt = example.labels
        for mask, cls in enumerate(mapping.tolist()):
            if cls < 0:
                continue
            truth = gt == cls
            ious = [float(((pred == mask) & truth).sum()) / max(1, float(((pred == mask)
                    | truth).sum())) for pred in (emerdiff, naive)]
            rows.append({"image": example.name, "mask": mask, "class": cls,
                         "gain": ious[0] - ious[1]})
    gains = pd.DataFrame(rows)
    if gains.empty:
        raise ValueError("no mask is matched to a class in these examples")
    best = gains.loc[gains["gain"].idxmax()]
    example = next(e for e in examples if e.name == best["image"])
    return Showcase(example, int(best["mask"]), gains)
