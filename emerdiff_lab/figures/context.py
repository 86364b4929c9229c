"""What every figure notebook needs after its parameters cell: the model, its settings, and the
images that fit it.

Data follows the model. ToyWorld models get their held-out **test** scenes (seeds from
``HELDOUT_SEED_START``; never the validation seeds used to choose settings) at their native size,
with exact labels. Other models get photos (``image_paths``, voc14 when present, the bundled
photos) and labelled images (voc14). A photo given to a ToyWorld model is flagged: the figure's
title and the notebook's output carry :data:`PHOTO_ON_TOYWORLD`.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
QUICK_IMAGE_SIZE = 128
QUICK_MAX_MASKS = 8
# Smoke mode (CI): every notebook runs end to end on this many images, with fewer masks and a
# coarser schedule, so that the whole set executes in about a minute: mechanics, not results.
SMOKE_IMAGES = 2
SMOKE_MAX_MASKS = 3
SMOKE_INFERENCE_STEPS = 10
# Quick mode (a CPU) runs the ablation sweeps of notebooks 05 and 09 on this coarser schedule, the
# default setting included, so that each paired difference compares like with like. A denoising
# from t_m then takes half the UNet calls of a 50-step default: on ToyWorld that is
# what brings `make figures` within its 10 minutes on 2 cores (docs/notebooks.md has the
# timings, and the 50- against 25-step scores of the same scenes). The other notebooks keep the
# model's own schedule.
QUICK_ABLATION_STEPS = 25
PHOTO_ON_TOYWORLD = ("WARNING: photos given to ToyWorld, a model trained only on 64 px synthetic "
                     "scenes; these results say little")


@dataclass(frozen=True)
class Example:
    """One image the notebooks run on.

    Attributes:
        name: short name for titles and CSV rows (``test+3``: the 4th test scene).
        image: (3, S, S) float32 in [0, 1] at the model's input size.
        labels: (S, S) int64 ground truth at the same pixels (255 = ignore), or None.
        source: "toyworld test scenes", "voc14", "bundled photo" or "file".
        seed: the scene generator's seed for generated scenes, else None.
    """

    name: str
    image: torch.Tensor
    labels: torch.Tensor | None
    source: str
    seed: int | None = None

    @property
    def is_photo(self) -> bool:
        return self.source in ("voc14", "bundled photo", "file")


# Sessions a FigureContext keeps: the current scene's on the model and on the random control.
SESSIONS_KEPT = 3


@dataclass
class FigureContext:
    """What every notebook needs after its parameters cell; made by :func:`setup`.

    Attributes:
        model: the loaded :class:`~emerdiff_lab.EmerDiffModel`.
        cfg: its default config with the notebook's K and seed (and smoke mode's reductions).
        ablation_cfg: the default the ablation sweeps vary (:attr:`ablation_cfg`).
        image_size: S, the side the model sees.
        quick: CPU mode (at most 128 px and 8 masks, short sweeps on a coarser schedule).
        smoke: CI mode (:data:`SMOKE_IMAGES` images per figure; numbers mean nothing).
        out_dir: where figures go; ``out_dir/executed/cache`` holds computed maps.
        weights: :func:`weights_fingerprint` of the model, for CSV rows.
    """

    model: object
    cfg: object
    image_size: int
    quick: bool
    out_dir: Path
    data_dir: Path | None = None
    image_paths: tuple[str, ...] = ()
    smoke: bool = False
    weights: str = ""
    timings: dict = field(default_factory=dict)
    sessions: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def tag(self) -> str:
        from ..plotting import model_tag

        return model_tag(self.model)

    @property
    def toyworld(self) -> str | None:
        """"toyworld" or "toyworld-latent" when the model is one of ours, else None."""
        model_id = str(getattr(self.model, "model_id", ""))
        return model_id if model_id in ("toyworld", "toyworld-latent") else None

    @property
    def ablation_cfg(self):
        """The default setting the ablation sweeps (notebooks 05, 09) vary and compare with:
        ``cfg``, on a :data:`QUICK_ABLATION_STEPS`-step schedule in quick mode when ``cfg``'s
        schedule is finer (its timesteps snapped onto it)."""
        if self.quick and self.cfg.num_inference_steps > QUICK_ABLATION_STEPS:
            return self.cfg.replace(**_coarser_schedule(self.model, self.cfg,
                                                        QUICK_ABLATION_STEPS))
        return self.cfg

    @property
    def ablation_note(self) -> str:
        """What a reader of an ablation figure must know about its schedule: "" when the
        sweeps use ``cfg``'s own, else e.g. "25-step schedule (quick mode; the model's: 50)"."""
        steps = self.ablation_cfg.num_inference_steps
        if steps == self.cfg.num_inference_steps:
            return ""
        return (f"{steps}-step schedule (quick mode; the model's: "
                f"{self.cfg.num_inference_steps})")

    @property
    def cache_dir(self) -> Path:
        return self.out_dir / "executed" / "cache"

    def session(self, example: Example, model=None):
        """The :class:`emerdiff_lab.session.Session` of ``example`` on ``model`` (default
        ``self.model``): made on first use with raw maps stored in :attr:`cache_dir`; the
        :data:`SESSIONS_KEPT` most recently used are kept."""
        from ..session import Session

        model = model or self.model
        key = (id(model), example.name, example.source)
        session = self.sessions.pop(key, None)
        if session is None or session.model is not model:
            session = Session(model, example.image, cfg=self.cfg, image_size=self.image_size,
                              store=self.cache_dir,
                              weights=self.weights if model is self.model else None)
        self.sessions[key] = session           # most recently used last
        while len(self.sessions) > SESSIONS_KEPT:
            self.sessions.pop(next(iter(self.sessions)))
        return session

    def count(self, wanted: int) -> int:
        """``wanted`` images, or :data:`SMOKE_IMAGES` in smoke mode."""
        return min(wanted, SMOKE_IMAGES) if self.smoke else wanted

    def title(self, text: str, examples=(), note: str = "") -> str:
        """``text`` plus n and the data's source; the photo-on-ToyWorld warning when it applies.
        ``note`` (e.g. :attr:`ablation_note`), when not empty, goes on a line of its own."""
        examples = list(examples)
        if note:
            text = f"{text}\n{note}"
        if examples:
            sources = sorted({e.source for e in examples})
            text = f"{text} (n = {len(examples)} {', '.join(sources)})"
        if self.toyworld and any(e.is_photo for e in examples):
            text = f"{text}\n{PHOTO_ON_TOYWORLD}"
        return text

    def save(self, fig, name: str, table=None) -> Path:
        """Writes ``fig`` (and ``table`` as CSV) to the output folder; see
        :func:`emerdiff_lab.plotting.save_figure` (random-weight figures must say so).

        A ``seconds`` column (compute times, e.g. :func:`ablation_table`'s) is written beside
        the cached data instead, ``out_dir/executed/timings/NAME.csv``: the times change on
        every run, the figure's CSV (committed) should change only when its numbers do."""
        from ..io import atomic_file
        from ..plotting import save_figure

        if table is not None and "seconds" in table.columns:
            timings = self.out_dir / "executed" / "timings" / Path(name).with_suffix(".csv").name
            timings.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(timings, "w", newline="") as handle:
                table.to_csv(handle, index=False)
            table = table.drop(columns="seconds")
        path = save_figure(fig, self.out_dir / name, self.model, table=table)
        print(f"wrote {path}" + (f" and {path.with_suffix('.csv').name}" if table is not None
                                 else ""))
        return path


def setup(model: str = "toyworld", device: str | None = None, dtype: str = "float32", *,
          image_size: int | None = None, num_masks: int | None = None, quick: bool = False,
          smoke: bool = False, out_dir: str | Path = "../outputs",
          data_dir: str | Path | None = None, image_paths=(), seed: int = 0) -> FigureContext:
    """Loads the model and resolves the notebook parameters into a :class:`FigureContext`.

    ``image_size`` None: the model's native size (512 for SD 1.x, 64 for ToyWorld), at most 128
    in quick mode. ``num_masks`` None: the model's default, at most 8 in quick mode and 3 in
    smoke mode. ``data_dir`` None: ``../shared/data/voc14`` beside the repository when present
    (used for models other than ToyWorld).
    """
    from ..models import load_model

    loaded = load_model(model, device=device, dtype=dtype)
    native = loaded.native_image_size
    quick = bool(quick or smoke)
    size = int(image_size) if image_size else (min(native, QUICK_IMAGE_SIZE) if quick else native)
    masks = int(num_masks) if num_masks else loaded.default_config.num_masks
    if quick:
        masks = min(masks, QUICK_MAX_MASKS)
    changes = {"num_masks": masks, "seed": int(seed)}
    if smoke:
        changes["num_masks"] = min(masks, SMOKE_MAX_MASKS)
        changes |= _coarser_schedule(loaded, loaded.default_config, SMOKE_INFERENCE_STEPS)
    cfg = loaded.default_config.replace(**changes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(data_dir) if data_dir else find_voc14()
    ctx = FigureContext(model=loaded, cfg=cfg, image_size=size, quick=quick, out_dir=out,
                        data_dir=data, image_paths=tuple(image_paths or ()), smoke=bool(smoke),
                        weights=weights_fingerprint(loaded))
    data_text = ("held-out ToyWorld test scenes" if ctx.toyworld and not ctx.image_paths
                 else f"labelled data: {data or 'generated toyworld scenes'}")
    print(f"model {model!r} on {loaded.device} ({loaded.dtype}); {size} px; K={cfg.num_masks}; "
          f"quick={quick}; smoke={bool(smoke)}; {data_text}; weights {ctx.weights}")
    if smoke:
        print(f"SMOKE MODE: {SMOKE_IMAGES} images, K <= {SMOKE_MAX_MASKS}, "
              f"{cfg.num_inference_steps} steps: checks that the notebook runs; its numbers "
              f"mean nothing.")
    if loaded.random_weights:
        print("NOTE: random weights. Every figure shows the method's mechanics, not semantics.")
    if ctx.toyworld and ctx.image_paths:
        print(PHOTO_ON_TOYWORLD)
    return ctx


def _coarser_schedule(model, cfg, steps: int) -> dict:
    """Config changes for a ``steps``-step schedule: the timesteps snapped onto it."""
    from ..inversion import schedule

    timesteps = schedule(model, steps).tolist()
    def snap(t):
        return min(timesteps, key=lambda s: abs(s - t))
    return {"num_inference_steps": steps, "feature_timestep": snap(cfg.feature_timestep),
            "modulation_timestep": snap(cfg.modulation_timestep)}


def weights_fingerprint(model) -> str:
    """First 16 hex digits of a SHA-256 over the UNet's (and VAE's) parameters as float32, in
    name order: says which weights produced a CSV row, whatever file they came from."""
    digest = hashlib.sha256()
    for part in (model.unet, getattr(model, "vae", None)):
        if part is None:
            continue
        for name, tensor in sorted(part.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def find_voc14() -> Path | None:
    """``$EMERDIFF_SHARED/data/voc14`` or ``../shared/data/voc14`` beside the repository, if
    present."""
    shared = Path(os.environ.get("EMERDIFF_SHARED", REPO_ROOT.parent / "shared"))
    voc = shared / "data" / "voc14"
    return voc if (voc / "images").is_dir() and (voc / "labels").is_dir() else None


# ------------------------------------------------------------------------------------ examples
def labelled_examples(ctx: FigureContext, count: int) -> list[Example]:
    """``count`` images with ground truth (``ctx.count`` applies smoke mode). ToyWorld: its
    held-out test scenes at the model's size. Other models: voc14 when present, else ToyWorld's
    64 px test scenes (exact labels, made in code)."""
    count = ctx.count(count)
    if ctx.toyworld or ctx.data_dir is None:
        return scene_examples(ctx.image_size, count, latent=ctx.toyworld == "toyworld-latent")
    return voc_examples(ctx.data_dir, ctx.image_size, count)


def photo_examples(ctx: FigureContext, count: int) -> list[Example]:
    """Images for qualitative figures (``ctx.count`` applies smoke mode): ``image_paths`` when
    given (flagged on ToyWorld), else ToyWorld's test scenes for ToyWorld, else voc14 when
    present, else the photos bundled with the package."""
    from ..images import open_image, prepare_image, sample_images

    count = ctx.count(count)
    if ctx.image_paths:
        return [Example(Path(p).stem, prepare_image(open_image(Path(p)), ctx.image_size).pixels,
                        None, "file") for p in ctx.image_paths[:count]]
    if ctx.toyworld:
        return scene_examples(ctx.image_size, count, latent=ctx.toyworld == "toyworld-latent")
    if ctx.data_dir is not None:
        return voc_examples(ctx.data_dir, ctx.image_size, count)
    bundled = sample_images()
    if not bundled:
        raise FileNotFoundError("no photos: pass image_paths, or reinstall emerdiff-lab (its "
                                "bundled photos are missing)")
    return [Example(name, prepare_image(open_image(path), ctx.image_size).pixels, None,
                    "bundled photo") for name, path in list(bundled.items())[:count]]


def voc_examples(root: str | Path, size: int, count: int) -> list[Example]:
    """The first ``count`` images of a ROOT/images + ROOT/labels folder (palette PNG labels),
    labels brought to the model's pixels by :func:`emerdiff_lab.evaluation.datasets.label_to_model`
    (the image's own resize and crop)."""
    from PIL import Image

    from ..evaluation.datasets import label_to_model
    from ..images import open_image, prepare_image

    root = Path(root)
    examples = []
    for image_path in sorted((root / "images").glob("*.jpg"))[:count]:
        label_path = root / "labels" / (image_path.stem + ".png")
        with Image.open(label_path) as label_image:
            labels = np.asarray(label_image).astype(np.int64)
        examples.append(Example(image_path.stem,
                                prepare_image(open_image(image_path), size).pixels,
                                torch.from_numpy(label_to_model(labels, size)), "voc14"))
    if not examples:
        raise FileNotFoundError(f"no *.jpg images under {root / 'images'}")
    return examples


def scene_examples(size: int, count: int, first: int = 0, *,
                   latent: bool = False) -> list[Example]:
    """ToyWorld's held-out test scenes ``first`` .. ``first + count - 1`` (seeds
    ``HELDOUT_SEED_START + i``; the validation seeds are never used) at ``size`` px with exact
    labels. ``latent``: the ToyWorld-latent scenes (``toyworld.scenes256``)."""
    from ..evaluation.datasets import label_to_model
    from ..images import prepare_image

    if latent:
        from ..toyworld.scenes256 import HELDOUT_SEED_START, SIZES, generate_scene
    else:
        from ..toyworld.scenes import HELDOUT_SEED_START, SIZES, generate_scene
    native = min([s for s in SIZES if s >= size] or [max(SIZES)])
    examples = []
    for i in range(first, first + count):
        seed = HELDOUT_SEED_START + i
        image, labels = generate_scene(seed, native)
        if native != size:  # the scene's own resolution when it exists: exact labels
            image = prepare_image(image, size).pixels
            labels = label_to_model(np.asarray(labels), size)
        else:
            image = torch.from_numpy(np.asarray(image)).permute(2, 0, 1).float() / 255
        examples.append(Example(f"test+{i}", image, torch.as_tensor(labels).long(),
                                "toyworld test scenes", seed))
    return examples
