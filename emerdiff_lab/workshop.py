"""The hands-on workshop (``notebooks/00_workshop.ipynb``, guide in ``docs/workshop.md``): the
checks its exercises end with, their model answers, and a lesson's bookkeeping.

Every ``check_*`` takes the learner's answer and what the answer should be computed from, works
the right answer out with the package's own functions, and returns a :class:`Check` that says
whether the answer is right and why; the usual mistakes get their own explanation. ``...`` (the
notebook's placeholder) means "not answered yet": a check never raises on it, so the notebook
runs from top to bottom before any exercise is done. :func:`solution` gives the model answers
(the notebook's ``solutions=True``). Predictions ("which will be larger?") are checked against
what was measured in the same notebook, with differences inside the noise accepted either way.

The measured helpers (:func:`mask_scores`, :func:`setting_scores`, :func:`sweep`) are what the
notebook runs between exercises; :data:`LESSON` records each part's compute time and each
exercise's latest check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .toyworld.evaluation import VALIDATION_SEED_START
from .toyworld.scenes import CLASS_NAMES, HELDOUT_SEED_START

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "00_workshop.ipynb"
# The three things Part 1 ranks by the mIoU of their k-means masks.
MASK_SOURCES = ("trained features", "colours", "random features")
# Part 2's three areas of the image, for "where does the change go?".
AREAS = ("the cell", "the rest of its class", "other classes")
# Part 3's prediction: what turning attention injection off does to EmerDiff's mIoU.
DIRECTIONS = ("up", "down", "about the same")
# With fewer scenes than this a standard error means little; a gap must then be this large.
MIN_SCENES_FOR_SE = 3
FEW_SCENES_GAP = 0.1


# ------------------------------------------------------------------------------------ results
@dataclass(frozen=True)
class Check:
    """The verdict on one exercise.

    Attributes:
        exercise: its number in the notebook, e.g. "2.2".
        status: "right", "wrong" or "unanswered".
        message: why, in a sentence or two.
    """

    exercise: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == "right"

    def __bool__(self) -> bool:
        return self.passed

    def __repr__(self) -> str:
        mark = {"right": "RIGHT", "wrong": "NOT YET", "unanswered": "NOT ANSWERED"}[self.status]
        return f"[{mark}] exercise {self.exercise}: {self.message}"


@dataclass
class Lesson:
    """A workshop run: its parts with their time, and each exercise's latest check.

    Each part keeps two clocks: wall-clock seconds (run headless, that is its compute time; run
    by hand it also holds the reading and thinking between cells) and the CPU seconds this
    process used (with one torch thread, about what the wall clock would read on an idle core,
    whatever else the machine is doing).
    """

    parts: list = field(default_factory=list)       # [title, wall start, cpu start, end or None]
    checks: dict = field(default_factory=dict)      # exercise -> Check

    def part(self, title: str) -> None:
        """Ends the running part (if any) and starts ``title``."""
        self._close()
        self.parts.append([title, time.perf_counter(), time.process_time(), None])
        print(f"== {title} ==")

    def finish(self) -> None:
        self._close()

    def _close(self) -> None:
        if self.parts and self.parts[-1][3] is None:
            self.parts[-1][3] = (time.perf_counter(), time.process_time())

    def record(self, check: Check) -> Check:
        self.checks[check.exercise] = check
        return check

    def timings(self, clock: str = "wall") -> list[tuple[str, float]]:
        """(title, seconds) per part on the ``"wall"`` or ``"cpu"`` clock; a running part
        counts up to now."""
        index = {"wall": 0, "cpu": 1}[clock]
        now = (time.perf_counter(), time.process_time())
        return [(title, (end or now)[index] - (wall, cpu)[index])
                for title, wall, cpu, end in self.parts]

    def report(self) -> str:
        """Per-part time (wall and CPU seconds) and the scorecard, as text."""
        wall, cpu = self.timings("wall"), self.timings("cpu")
        lines = [f"{'part':<48}{'wall s':>9}{'CPU s':>9}"]
        lines += [f"{title[:48]:<48}{w:>9.1f}{c:>9.1f}" for (title, w), (_, c) in zip(wall, cpu)]
        lines.append(f"{'total':<48}{sum(w for _, w in wall):>9.1f}"
                     f"{sum(c for _, c in cpu):>9.1f}")
        right = sum(c.passed for c in self.checks.values())
        lines.append(f"\nexercises right: {right} of {len(self.checks)}")
        lines += [f"  {c.exercise}: {c.status}" for c in self.checks.values()]
        return "\n".join(lines)

    def all_right(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks.values())


LESSON = Lesson()


def new_lesson(threads: bool = True) -> Lesson:
    """Starts a fresh :data:`LESSON` (the notebook's set-up cell does) and, with ``threads``,
    sets torch's thread count for interactive use (:mod:`emerdiff_lab.threads`: one core left
    free, so that a laptop's browser and video call do not stall every parallel region)."""
    global LESSON
    if threads:
        from .threads import apply_interactive_threads

        apply_interactive_threads()
    LESSON = Lesson()
    return LESSON


def _verdict(exercise: str, status: str, message: str) -> Check:
    return LESSON.record(Check(exercise, status, message))


def _unanswered(exercise: str) -> Check:
    return _verdict(exercise, "unanswered", "replace the `...` with your answer and run the "
                                            "cell again")


# ---------------------------------------------------------------------------------- scenes
def heldout_test_seeds(n: int, start: int = 0) -> list[int]:
    """Seeds of held-out *test* scenes (reported on; never used to choose settings)."""
    return list(range(HELDOUT_SEED_START + start, HELDOUT_SEED_START + start + n))


def validation_seeds(n: int) -> list[int]:
    """Seeds of held-out *validation* scenes (for choosing settings)."""
    return list(range(VALIDATION_SEED_START, VALIDATION_SEED_START + n))


def scenes(seeds, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """ToyWorld scenes of ``seeds``: (n, 3, S, S) float32 in [0, 1] and (n, S, S) int64 labels."""
    from .toyworld.scenes import generate_batch

    images, labels = generate_batch(list(seeds), size)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255,
            torch.from_numpy(labels))


def class_id(name: str) -> int:
    if name not in CLASS_NAMES:
        raise ValueError(f"unknown class {name!r}; ToyWorld's classes are {list(CLASS_NAMES)}")
    return CLASS_NAMES.index(name)


def interior_cell(labels: torch.Tensor, name: str, grid: int = 16) -> tuple[int, int]:
    """(row, col) of a grid cell well inside class ``name``: its own pixels and its 8
    neighbours' all of that class (the most central such cell), else any cell all of it.

    Raises:
        ValueError: no cell of the grid is entirely ``name``.
    """
    cell = labels.shape[-1] // grid
    pure = (labels.reshape(grid, cell, grid, cell) == class_id(name)).all(3).all(1)
    # A cell is inner when the minimum of `pure` over its 3x3 neighbourhood is 1 (the border
    # of the image counts as outside).
    padded = torch.nn.functional.pad(pure[None, None].float(), (1, 1, 1, 1))
    inner = -torch.nn.functional.max_pool2d(-padded, 3, stride=1)[0, 0] == 1
    for candidates in (pure & inner, pure):
        rows, cols = torch.nonzero(candidates, as_tuple=True)
        if len(rows):
            centre = torch.stack([rows, cols], 1).float().mean(0)
            best = ((torch.stack([rows, cols], 1) - centre) ** 2).sum(1).argmin()
            return int(rows[best]), int(cols[best])
    raise ValueError(f"no {grid}x{grid} cell lies entirely in {name!r}")


def cell_pixels(cell: tuple[int, int], size: int = 64, grid: int = 16) -> torch.Tensor:
    """(S, S) bool: the pixels of grid cell (row, col)."""
    step = size // grid
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[cell[0] * step:(cell[0] + 1) * step, cell[1] * step:(cell[1] + 1) * step] = True
    return mask


# --------------------------------------------------------------------- measured by the lesson
def miou(pred, truth) -> float:
    """Per-image Hungarian mIoU in [0, 1] (``emerdiff_lab.evaluation.metrics``)."""
    from .evaluation.metrics import hungarian_miou

    return float(hungarian_miou(torch.as_tensor(pred), torch.as_tensor(truth)).miou)


def nearest(lowres: torch.Tensor, size: int) -> torch.Tensor:
    """(h, w) masks -> (size, size), each cell one block (what the masks say, undisguised)."""
    from .toyworld.evaluation import nearest_upsample

    return nearest_upsample(lowres, size)


def mask_scores(models: dict, images: torch.Tensor, labels: torch.Tensor, k: int = 6,
                seed: int = 0, progress: bool = False) -> dict[str, list[float]]:
    """Part 1: per-scene mIoU of k-means masks of trained features, of cell colours and of
    random-weight features (``models``: {"trained": model, "random": model}).

    Returns:
        {name in :data:`MASK_SOURCES`: [per-scene mIoU]}.
    """
    from tqdm.auto import tqdm

    from .features import extract_features, kmeans_masks

    size = images.shape[-1]
    out = {name: [] for name in MASK_SOURCES}
    for image, truth in tqdm(list(zip(images, labels)), desc="scenes", disable=not progress):
        for name, model in (("trained features", models["trained"]),
                            ("random features", models["random"])):
            feats = extract_features(model, image, model.default_config)
            out[name].append(miou(nearest(kmeans_masks(feats, k=k, seed=seed), size), truth))
        out["colours"].append(miou(nearest(colour_masks(image, k, seed), size), truth))
    return out


def colour_masks(image: torch.Tensor, k: int = 6, seed: int = 0) -> torch.Tensor:
    """(16, 16) k-means masks of the cells' mean colours (Part 1's baseline)."""
    from .features import kmeans_masks

    return kmeans_masks(_cell_colours(image, 16), k=k, seed=seed, normalization="none")


def setting_scores(model, images: torch.Tensor, labels: torch.Tensor, settings: dict,
                   cfg=None, progress: bool = False) -> dict[str, list[float]]:
    """Per-scene mIoU of naive upsampling and of EmerDiff under each of ``settings``.

    Args:
        settings: {name: config changes}, e.g. {"on": {}, "off": {"attention_injection":
            False}}; each is applied to ``cfg`` (default ``model.default_config``).

    Returns:
        {"naive": [...], name: [...] for each setting}, one mIoU per scene; "naive" upsamples
        ``cfg``'s masks (:func:`emerdiff_lab.toyworld.evaluation.config_scores`: one
        session per scene, every setting reusing the stages it does not change).
    """
    from .toyworld.evaluation import config_scores

    cfg = cfg or model.default_config
    configs = {name: cfg.replace(**changes) for name, changes in settings.items()}
    return config_scores(model, images, labels, configs, cfg, progress=progress)


def sweep(model, images: torch.Tensor, labels: torch.Tensor, timesteps, strengths,
          cfg=None, progress: bool = False) -> dict[tuple[int, float], float]:
    """Part 4: mean EmerDiff mIoU over the scenes for every (t_m, lambda)."""
    settings = {(int(t), float(s)): {"modulation_timestep": int(t),
                                     "modulation_strength": float(s)}
                for t in timesteps for s in strengths}
    scores = setting_scores(model, images, labels, settings, cfg, progress)
    return {key: float(np.mean(scores[key])) for key in settings}


def paired_gap(a, b) -> tuple[float, float, bool]:
    """Mean of ``a - b`` over paired scenes, its standard error, and whether the gap is clear.

    Clear: larger than twice its standard error (and than 0.01) with at least
    :data:`MIN_SCENES_FOR_SE` scenes; with fewer, larger than :data:`FEW_SCENES_GAP`.
    """
    diff = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    mean = float(diff.mean())
    if len(diff) >= MIN_SCENES_FOR_SE:
        se = float(diff.std(ddof=1) / np.sqrt(len(diff)))
        return mean, se, abs(mean) > max(2 * se, 0.01)
    return mean, float("nan"), abs(mean) > FEW_SCENES_GAP


# ------------------------------------------------------------------------ answer handling
def _is_unanswered(answer) -> bool:
    return answer is Ellipsis


def _fraction_answer(exercise: str, answer) -> float | Check:
    """The answer as one float, or the Check that says why there is none (not answered yet, or
    not a number)."""
    if _is_unanswered(answer):
        return _unanswered(exercise)
    try:
        return float(answer)
    except (TypeError, ValueError):
        return _verdict(exercise, "wrong", f"expected one number in [0, 1], got "
                        f"{type(answer).__name__}")


def _as_tensor(answer, what: str):
    """``answer`` as a float tensor, or a message saying what was expected."""
    if isinstance(answer, np.ndarray):
        answer = torch.from_numpy(answer)
    if not isinstance(answer, torch.Tensor):
        return None, f"expected {what} (a torch tensor or numpy array), got " \
                     f"{type(answer).__name__}"
    return answer.detach().cpu(), None


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    """Equal up to float rounding, relative to the reference's scale."""
    if a.shape != b.shape:
        return False
    scale = float(b.abs().max()) or 1.0
    return float((a.float() - b.float()).abs().max()) <= rtol * scale + 1e-7


# ------------------------------------------------------------ part 1: what the features know
def _cell_colours(image: torch.Tensor, grid: int) -> torch.Tensor:
    channels, size, _ = image.shape
    step = size // grid
    return image.reshape(channels, grid, step, grid, step).mean(dim=(2, 4)).permute(1, 2, 0)


def check_cell_colours(answer, image: torch.Tensor, grid: int = 16) -> Check:
    """1.1: the mean colour of each cell of the 16x16 grid: (16, 16, 3), channels last (the
    layout k-means and the features use: one row per cell)."""
    exercise = "1.1"
    if _is_unanswered(answer):
        return _unanswered(exercise)
    answer, problem = _as_tensor(answer, f"a ({grid}, {grid}, 3) tensor")
    if problem:
        return _verdict(exercise, "wrong", problem)
    expected = _cell_colours(image, grid)
    step = image.shape[-1] // grid
    if tuple(answer.shape) == (3, grid, grid):
        return _verdict(exercise, "wrong", f"channels come first in your ({3}, {grid}, {grid}); "
                        f"k-means wants one row per cell: permute to ({grid}, {grid}, 3)")
    if tuple(answer.shape) != tuple(expected.shape):
        return _verdict(exercise, "wrong", f"expected shape {tuple(expected.shape)} (one colour "
                        f"per cell of the {grid}x{grid} grid), got {tuple(answer.shape)}")
    if _close(answer, expected):
        return _verdict(exercise, "right", f"each cell's {step}x{step} pixels averaged: the "
                        f"colour 'feature' of the same grid the model's features live on")
    if _close(answer, image[:, ::step, ::step].permute(1, 2, 0)):
        return _verdict(exercise, "wrong", f"that is one pixel per cell (a stride of {step}), "
                        f"not the cell's mean: ToyWorld's textures make single pixels noisy; "
                        f"average the {step}x{step} block")
    if _close(answer, expected * step * step):
        return _verdict(exercise, "wrong", f"that is the sum of the {step * step} pixels; "
                        f"divide by {step * step} (or use .mean) to keep colours in [0, 1]")
    return _verdict(exercise, "wrong", f"differs from the cell means by up to "
                    f"{float((answer.float() - expected).abs().max()):.3g}: check that each "
                    f"value averages exactly the {step}x{step} pixels of its own cell (compare "
                    f"your top-left value with the mean of the scene's top-left {step}x{step} "
                    f"block) and that no pixel of a neighbouring cell is mixed in")


def check_ranking(answer, scores: dict[str, list[float]]) -> Check:
    """1.2 (a prediction): ``MASK_SOURCES`` ordered by the mIoU of their k-means masks, best
    first. Checked against ``scores`` (per-scene mIoU from :func:`mask_scores`); a pair whose
    gap is inside the noise may come in either order."""
    exercise = "1.2"
    if _is_unanswered(answer):
        return _unanswered(exercise)
    if not isinstance(answer, (list, tuple)) or sorted(answer) != sorted(MASK_SOURCES):
        return _verdict(exercise, "wrong", f"rank exactly these three, best first: "
                        f"{list(MASK_SOURCES)}; got {answer!r}")
    means = {name: float(np.mean(scores[name])) for name in MASK_SOURCES}
    measured = ", ".join(f"{n} {means[n]:.3f}" for n in sorted(means, key=means.get,
                                                                  reverse=True))
    wrong, close = [], []
    for i, better in enumerate(answer):
        for worse in answer[i + 1:]:
            gap, _, clear = paired_gap(scores[better], scores[worse])
            if clear and gap < 0:
                wrong.append(f"{worse} beats {better} by {-gap:.3f}")
            elif not clear:
                close.append(f"{better} vs {worse} ({gap:+.3f})")
    n = len(next(iter(scores.values())))
    note = f" Too close to call on {n} scene(s): {'; '.join(close)}." if close else ""
    if wrong:
        return _verdict(exercise, "wrong", f"measured mean mIoU: {measured}. Clearly, "
                        f"{'; '.join(wrong)}.{note}")
    return _verdict(exercise, "right", f"measured mean mIoU: {measured}.{note} The trained "
                    f"features are far more semantic than random ones; ToyWorld's classes also "
                    f"have distinctive colours, so a colour clustering is a strong baseline here.")


# --------------------------------------------------------------- part 2: perturb one region
def area_means(diff: torch.Tensor, labels: torch.Tensor, cell: tuple[int, int],
               grid: int = 16) -> dict[str, float]:
    """Mean change per pixel in each of :data:`AREAS` for a perturbation of ``cell``.

    The cell's class is the majority class of its pixels.
    """
    inside = cell_pixels(cell, labels.shape[-1], grid)
    own = int(torch.mode(labels[inside]).values)
    same = (labels == own) & ~inside
    return {AREAS[0]: float(diff[inside].mean()), AREAS[1]: float(diff[same].mean()),
            AREAS[2]: float(diff[labels != own].mean())}


def check_change_prediction(answer, diff: torch.Tensor, labels: torch.Tensor,
                            cell: tuple[int, int]) -> Check:
    """2.1 (a prediction, made before looking): :data:`AREAS` ordered by mean change per pixel,
    largest first, for the perturbation of ``cell`` whose difference map is ``diff``."""
    exercise = "2.1"
    if _is_unanswered(answer):
        return _unanswered(exercise)
    if not isinstance(answer, (list, tuple)) or sorted(answer) != sorted(AREAS):
        return _verdict(exercise, "wrong", f"order exactly these three, largest change first: "
                        f"{list(AREAS)}; got {answer!r}")
    means = area_means(diff, labels, cell)
    measured = sorted(means, key=means.get, reverse=True)
    numbers = ", ".join(f"{a} {means[a]:.4f}" for a in measured)
    if list(answer) == measured:
        ratio = means[AREAS[1]] / max(means[AREAS[2]], 1e-12)
        return _verdict(exercise, "right", f"mean change per pixel: {numbers}. The rest of the "
                        f"cell's class changes {ratio:.1f}x more than other classes: the "
                        f"generator redraws the region the cell belongs to, not just the cell.")
    if list(answer[:1]) == measured[:1]:
        return _verdict(exercise, "wrong", f"the cell itself is right, but measured: {numbers}. "
                        f"Outside the cell the change is not uniform; look at the difference "
                        f"map beside the labels.")
    return _verdict(exercise, "wrong", f"measured: {numbers}. The offset is added at the cell, "
                    f"so the cell's own pixels move most; look at the difference map.")


def check_difference_map(answer, pert) -> Check:
    """2.2: the difference map ||I- - I+||_2 over RGB, one value per pixel: (S, S)."""
    from .modulation import rgb_distance

    exercise = "2.2"
    if _is_unanswered(answer):
        return _unanswered(exercise)
    answer, problem = _as_tensor(answer, "an (S, S) tensor")
    if problem:
        return _verdict(exercise, "wrong", problem)
    plus, minus = pert.plus.detach().cpu().float(), pert.minus.detach().cpu().float()
    expected = rgb_distance(plus, minus)
    if answer.shape != expected.shape:
        hint = " (the distance runs over the three colour channels, the first axis)" \
            if answer.ndim != 2 or \
            3 in answer.shape else ""
        return _verdict(exercise, "wrong", f"expected one value per pixel, shape "
                        f"{tuple(expected.shape)}; got {tuple(answer.shape)}{hint}")
    if _close(answer, expected):
        return _verdict(exercise, "right", f"the L2 distance over RGB; largest change "
                        f"{float(expected.max()):.4f} (pixel values are in [0, 1])")
    if _close(answer, expected ** 2):
        return _verdict(exercise, "wrong", "that is the squared distance: take the square root "
                                           "(it changes which mask wins where maps are close)")
    if _close(answer, (minus - plus).abs().mean(0)):
        return _verdict(exercise, "wrong", "that is the mean absolute difference over the "
                                           "channels; the method uses the L2 norm over RGB")
    if float(answer.min()) < 0:
        return _verdict(exercise, "wrong", "a distance is never negative: you kept the sign of "
                                           "I- - I+; take the norm over the channels")
    return _verdict(exercise, "wrong", f"differs from ||I- - I+||_2 by up to "
                    f"{float((answer.float() - expected).abs().max()):.3g}: look at one pixel "
                    f"by hand (its three channel differences, squared, summed, square-rooted) "
                    f"and compare it with your value there")


# ------------------------------------------------------------ part 3: attention injection
def check_class_share(answer, diff: torch.Tensor, region: torch.Tensor) -> Check:
    """3.1: the fraction of all the change that falls in ``region`` (the cell's class):
    sum of ``diff`` inside / sum everywhere, in [0, 1]."""
    exercise = "3.1"
    value = _fraction_answer(exercise, answer)
    if isinstance(value, Check):
        return value
    total = float(diff.sum())
    expected = float(diff[region].sum()) / total
    if abs(value - expected) <= 1e-4:
        area = float(region.float().mean())
        return _verdict(exercise, "right", f"{expected:.3f} of the change falls in a region "
                        f"that is {area:.3f} of the image")
    if abs(value - float(region.float().mean())) <= 1e-4:
        return _verdict(exercise, "wrong", "that is the region's share of the pixels, not of "
                                           "the change: weight each pixel by its change")
    if abs(value - (1 - expected)) <= 1e-4:
        return _verdict(exercise, "wrong", "that is the share *outside* the region")
    if abs(value - float(diff[region].mean()) / float(diff.mean())) <= 1e-4:
        return _verdict(exercise, "wrong", "that is a ratio of means (how much more each pixel "
                                           "inside changes); divide sums instead")
    if not 0 <= value <= 1:
        return _verdict(exercise, "wrong", f"a share is in [0, 1]; got {value:.3g}")
    too = "high" if value > expected else "low"
    return _verdict(exercise, "wrong", f"got {value:.3f}, too {too}, and none of the usual slips "
                    f"(the region's share of the pixels, the share outside, a ratio of means): "
                    f"check what your numerator and your denominator each add up, and over "
                    f"which pixels")


def check_injection_prediction(answer, on: list[float], off: list[float]) -> Check:
    """3.2 (a prediction): what turning attention injection off does to EmerDiff's mIoU on
    the scenes (``on``, ``off``: per-scene mIoU): one of :data:`DIRECTIONS`."""
    exercise = "3.2"
    if _is_unanswered(answer):
        return _unanswered(exercise)
    if answer not in DIRECTIONS:
        return _verdict(exercise, "wrong", f"answer one of {list(DIRECTIONS)}; got {answer!r}")
    gap, se, clear = paired_gap(off, on)
    measured = "about the same" if not clear else ("up" if gap > 0 else "down")
    spread = f" ± {se:.3f} (s.e.)" if se == se else ""
    numbers = (f"mean mIoU with injection {np.mean(on):.3f}, without {np.mean(off):.3f} "
               f"(change {gap:+.3f}{spread} over {len(on)} scene(s))")
    if answer == measured:
        return _verdict(exercise, "right", f"{numbers}. The paper (Table 9) finds injection "
                        f"matters for SD; measure before you believe it for another model.")
    return _verdict(exercise, "wrong", f"{numbers}: that is '{measured}'.")


# ----------------------------------------------------------------- part 4: t_m and lambda
def check_sweep_seeds(answer) -> Check:
    """4.1: the scene seeds to choose t_m and lambda on: validation seeds only."""
    exercise = "4.1"
    if _is_unanswered(answer):
        return _unanswered(exercise)
    try:
        seeds = [int(s) for s in answer]
    except (TypeError, ValueError):
        return _verdict(exercise, "wrong", "expected a list of integer seeds")
    if not seeds:
        return _verdict(exercise, "wrong", "no seeds: a choice needs at least one scene")
    end = VALIDATION_SEED_START + 1_000_000
    training = [s for s in seeds if s < HELDOUT_SEED_START]
    test = [s for s in seeds if HELDOUT_SEED_START <= s < VALIDATION_SEED_START]
    outside = [s for s in seeds if s >= end]
    if training:
        return _verdict(exercise, "wrong", f"{training[:3]} are training seeds: the model has "
                        f"seen these scenes, so they flatter every setting")
    if test:
        return _verdict(exercise, "wrong", f"{test[:3]} are test seeds: choosing settings on "
                        f"the scenes you report on makes the reported score optimistic; use "
                        f"validation seeds ({VALIDATION_SEED_START:,} and up)")
    if outside:
        return _verdict(exercise, "wrong", f"{outside[:3]} lie outside the validation range "
                        f"{VALIDATION_SEED_START:,}-{end - 1:,}")
    return _verdict(exercise, "right", f"{len(seeds)} validation scene(s): settings are chosen "
                    f"here and reported on the untouched test scenes")


def check_best_setting(answer, scores: dict) -> Check:
    """4.2: the (t_m, lambda) with the highest mean mIoU in ``scores`` (from :func:`sweep`)."""
    exercise = "4.2"
    if _is_unanswered(answer):
        return _unanswered(exercise)
    try:
        key = (int(answer[0]), float(answer[1]))
    except (TypeError, ValueError, IndexError, KeyError):
        return _verdict(exercise, "wrong", "expected a pair (t_m, lambda), e.g. (481, 10.0)")
    if key not in scores:
        return _verdict(exercise, "wrong", f"{key} is not in the sweep; its settings are "
                        f"{sorted(scores)}")
    best = max(scores.values())
    if scores[key] >= best - 1e-12:
        return _verdict(exercise, "right", f"t_m={key[0]}, lambda={key[1]:g} scores "
                        f"{best:.3f} on the validation scenes; now report it on the test scenes")
    if scores[key] <= min(scores.values()) + 1e-12:
        return _verdict(exercise, "wrong", f"{key} is the worst of the sweep ({scores[key]:.3f}):"
                        f" the highest mean mIoU is wanted, not the lowest")
    higher = sum(v > scores[key] + 1e-12 for v in scores.values())
    return _verdict(exercise, "wrong", f"{key} scores {scores[key]:.3f}, but {higher} setting(s) "
                    f"of the table score higher: read every cell of the table")


# --------------------------------------------------------- part 5: assembling the segmentation
def check_assembly(answer, maps: torch.Tensor, blur_sigma: float) -> Check:
    """5.1: labels from (K, S, S) raw difference maps: blur each map (``blur_sigma`` px), then
    every pixel takes the mask whose map is largest there: (S, S) ints."""
    from .assembly import assemble, gaussian_blur

    exercise = "5.1"
    if _is_unanswered(answer):
        return _unanswered(exercise)
    answer, problem = _as_tensor(answer, "an (S, S) tensor of mask ids")
    if problem:
        return _verdict(exercise, "wrong", problem)
    expected = assemble(maps, blur_sigma)
    if answer.shape != expected.shape:
        return _verdict(exercise, "wrong", f"expected {tuple(expected.shape)}, one mask id per "
                        f"pixel; got {tuple(answer.shape)}: the choice is made over the masks, "
                        f"the first axis of the maps")
    if answer.is_floating_point():
        return _verdict(exercise, "wrong", "labels are mask ids (integers): take the argmax, "
                                           "not the max")
    agreement = float((answer == expected).float().mean())
    if agreement == 1.0:
        return _verdict(exercise, "right", f"{int(expected.unique().numel())} masks reach the "
                        f"image; each pixel went to the mask whose offset changes it most")
    if torch.equal(answer, gaussian_blur(maps, blur_sigma).argmin(0)):
        return _verdict(exercise, "wrong", "argmin gives each pixel to the mask that changes it "
                                           "least; it belongs to the one that changes it most")
    if torch.equal(answer, maps.argmax(0)):
        return _verdict(exercise, "wrong", f"close ({agreement:.1%} of pixels agree): blur each "
                        f"map first (sigma {blur_sigma:g} px) so that single noisy pixels do "
                        f"not decide")
    return _verdict(exercise, "wrong", f"only {agreement:.1%} of pixels agree: check the order "
                    f"(blur every map first, then choose per pixel), the blur's sigma "
                    f"({blur_sigma:g} px) and that the choice runs over the masks")


def check_miou(answer, pred: torch.Tensor, truth: torch.Tensor) -> Check:
    """5.2: the per-image Hungarian mIoU of ``pred`` (mask ids) against ``truth`` (classes)."""
    from .evaluation.metrics import confusion_matrix, hungarian_miou, mean_iou

    exercise = "5.2"
    value = _fraction_answer(exercise, answer)
    if isinstance(value, Check):
        return value
    pred_np, truth_np = np.asarray(pred), np.asarray(truth)
    result = hungarian_miou(pred_np, truth_np)
    if abs(value - result.miou) <= 1e-6:
        return _verdict(exercise, "right", f"mIoU {result.miou:.3f} after matching each mask to "
                        f"at most one class (pixel accuracy {result.pixel_accuracy:.3f})")
    classes = int(max(pred_np.max(), truth_np.max())) + 1
    identity = mean_iou(confusion_matrix(pred_np, truth_np, classes))
    if abs(value - identity) <= 1e-6:
        return _verdict(exercise, "wrong", "that treats mask ids as class ids, but k-means "
                        "numbers its masks arbitrarily: match masks to classes first "
                        "(hungarian_miou does)")
    if abs(value - result.pixel_accuracy) <= 1e-6:
        return _verdict(exercise, "wrong", "that is the pixel accuracy; mIoU averages each "
                                           "class's intersection over union")
    if not 0 <= value <= 1:
        return _verdict(exercise, "wrong", f"an mIoU is in [0, 1]; got {value:.3g}")
    return _verdict(exercise, "wrong", f"got {value:.3f}, none of the usual slips (ids taken "
                    f"as classes, pixel accuracy): check that you score `emerdiff` against "
                    f"`truth`, in that order, and read the result's mIoU")


# -------------------------------------------------------------------- part 6: where it fails
def failure_table(pred: torch.Tensor, truth: torch.Tensor) -> list[dict]:
    """Per ground-truth class: share, best IoU of any segment, segments inside
    (:func:`emerdiff_lab.figures.failure_stats` with ToyWorld's class names)."""
    from .figures import failure_stats

    return failure_stats(torch.as_tensor(pred), torch.as_tensor(truth),
                         class_names=CLASS_NAMES)


def check_worst_class(answer, pred: torch.Tensor, truth: torch.Tensor) -> Check:
    """6.1: the name of the class that no segment covers well (lowest best IoU)."""
    exercise = "6.1"
    if _is_unanswered(answer):
        return _unanswered(exercise)
    rows = failure_table(pred, truth)
    names = [r["name"] for r in rows]
    if answer not in names:
        return _verdict(exercise, "wrong", f"answer one of the classes in this scene: {names}")
    worst = min(rows, key=lambda r: r["best_iou"])
    mine = next(r for r in rows if r["name"] == answer)
    if mine["best_iou"] <= worst["best_iou"] + 1e-9:
        return _verdict(exercise, "right", f"{answer} covers {mine['share']:.1%} of the image "
                        f"and its best segment reaches IoU {mine['best_iou']:.2f}: parts "
                        f"thinner than a 4-pixel cell have no feature of their own")
    largest = max(rows, key=lambda r: r["share"])
    if answer == largest["name"]:
        return _verdict(exercise, "wrong", f"{answer} is the largest region "
                        f"({mine['share']:.1%}); its best segment reaches IoU "
                        f"{mine['best_iou']:.2f}. Look for the lowest best_iou, not the "
                        f"largest share")
    return _verdict(exercise, "wrong", f"{answer}'s best IoU is {mine['best_iou']:.2f}; another "
                    f"class's is lower: read the best_iou column")


def check_split_count(answer, pred: torch.Tensor, truth: torch.Tensor, name: str) -> Check:
    """6.2: into how many segments the region of class ``name`` is split (segments covering
    at least 5% of it, as :func:`failure_table` counts)."""
    exercise = "6.2"
    if _is_unanswered(answer):
        return _unanswered(exercise)
    try:
        count = int(answer)
    except (TypeError, ValueError):
        return _verdict(exercise, "wrong", "expected a whole number of segments")
    rows = {r["name"]: r for r in failure_table(pred, truth)}
    if name not in rows:
        raise ValueError(f"{name!r} is not in this scene; it has {list(rows)}")
    expected = rows[name]["segments_inside"]
    if count == expected:
        why = ("one large uniform region split in several: its features vary with position "
               "(and ripple or cloud phase), so k-means cuts it") if expected > 1 else \
            "in one piece in this scene"
        return _verdict(exercise, "right", f"{expected} segment(s) cover {name}: {why}")
    if count == int(torch.as_tensor(pred).unique().numel()):
        return _verdict(exercise, "wrong", f"that is every segment of the image; count those "
                        f"covering at least 5% of the {name} region")
    return _verdict(exercise, "wrong", f"{count} is not what the table counts: count only the "
                    f"segments that cover at least 5% of the {name} region (the "
                    f"segments_inside column)")


# ------------------------------------------------------------------------------ model answers
def solution(exercise: str, **context):
    """The model answer to ``exercise`` (the notebook's ``solutions=True``), computed from the
    same ``context`` its check takes (e.g. ``image=...`` for 1.1, ``pert=...`` for 2.2)."""
    answers = {
        "1.1": lambda image: _cell_colours(image, 16),
        # Predictions: what the full workshop measures (docs/workshop.md has the numbers).
        "1.2": lambda: ["colours", "trained features", "random features"],
        "2.1": lambda: list(AREAS),
        "2.2": lambda pert: (pert.minus - pert.plus).norm(dim=0),
        "3.1": lambda diff, region: float(diff[region].sum() / diff.sum()),
        "3.2": lambda: "about the same",
        "4.1": lambda n=2: validation_seeds(n),
        "4.2": lambda scores: max(scores, key=scores.get),
        "5.1": lambda maps, blur_sigma: _blurred(maps, blur_sigma).argmax(0),
        "5.2": lambda pred, truth: miou(pred, truth),
        "6.1": lambda pred, truth: min(failure_table(pred, truth),
                                       key=lambda r: r["best_iou"])["name"],
        "6.2": lambda pred, truth, name: next(r["segments_inside"] for r in
                                              failure_table(pred, truth) if r["name"] == name),
    }
    if exercise not in answers:
        raise ValueError(f"no exercise {exercise!r}; exercises are {sorted(answers)}")
    return answers[exercise](**context)


def _blurred(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    from .assembly import gaussian_blur

    return gaussian_blur(maps, sigma)


# ------------------------------------------------------------------------- running the notebook
def execute(target: str | Path, *, solutions: bool = True, smoke: bool = True,
            timeout: int | None = 600, **parameters) -> Path:
    """Runs ``notebooks/00_workshop.ipynb`` headlessly (papermill, this Python) into ``target``.

    Instructors: ``python -m emerdiff_lab.workshop OUT.ipynb`` checks a laptop before a
    session. Raises papermill's ``PapermillExecutionError`` when a cell fails.
    """
    import papermill

    from .figures import _current_python_kernel

    with _current_python_kernel() as kernel:
        papermill.execute_notebook(
            str(NOTEBOOK), str(target), parameters={"solutions": solutions, "smoke": smoke,
                                                    **parameters},
            cwd=str(NOTEBOOK.parent), kernel_name=kernel, progress_bar=False,
            execution_timeout=timeout)
    return Path(target)


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m emerdiff_lab.workshop",
        description="Run the workshop notebook headlessly with its model answers and print "
                    "each part's compute time (a check of a laptop before a session).")
    parser.add_argument("target", type=Path, help="where to write the executed notebook")
    parser.add_argument("--full", action="store_true",
                        help="the full-size lesson (default: the smoke size, about a minute)")
    args = parser.parse_args(argv)
    execute(args.target, solutions=True, smoke=not args.full)
    print(f"executed: {args.target}; its last cell's output holds the per-part times")
    return 0


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
