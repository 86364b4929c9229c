"""Dataset-scale evaluation: per-image records written as produced, resumable, split by accelerate.

Layout of ``OUT``::

    run.json                 what the records were made with; a rerun must match it
    records/<id>.npz         per image: gt, emerdiff, bilinear, lowres, mask_embeddings
    records/<id>.openvocab.npz  per image, open-vocabulary class maps (only with that protocol)
    summary.json, summary.md the scores of every protocol, EmerDiff and the bilinear baseline

Every record is written atomically (temporary file, then rename), so a killed run leaves only
whole records; the same command started again skips them and computes only what is missing.
With several processes (``accelerate launch``/``torchrun``) ``PartialState`` splits the missing
images between processes; every process writes its records under ``OUT`` (a folder all of them
see), and the main process computes the summary once they all finished.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import protocols as P
from .datasets import Sample, SegmentationDataset, label_to_model

PROTOCOLS = ("hungarian", "modified", "traditional", "open-vocab")
LABEL_POLICY = ("resized (shorter side to image_size, nearest neighbour) and centre-cropped "
                "exactly like the image; every method is scored on that image_size x image_size "
                "square")
_TABLE = {"hungarian": "1", "traditional": "1", "modified": "2", "open-vocab": "3"}


def record_path(out: Path, sample: Sample, part: str = "") -> Path:
    return Path(out) / "records" / f"{sample.id}{'.' + part if part else ''}.npz"


def _save_atomic(path: Path, arrays: dict) -> None:
    # Rename is atomic on POSIX: a killed process never leaves a half-written record behind.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    os.replace(tmp, path)


def _load(path: Path) -> dict:
    with np.load(path) as data:
        return {key: data[key] for key in data.files}


def compute_record(model, dataset: SegmentationDataset, sample: Sample, cfg,
                   image_size: int) -> dict:
    """Segments one image and returns what every protocol needs, at (S, S) = image_size.

    Returns arrays: gt (S, S) int32, emerdiff (S, S) int16, bilinear (S, S) int16,
    lowres (h, w) int16, mask_embeddings (K, C) float32.
    """
    from ..assembly import upsample_bilinear
    from ..images import open_image
    from ..segmentation import segment

    photo = open_image(sample.image).convert("RGB")
    label = dataset.load_label(sample)
    if label.shape != (photo.height, photo.width):
        raise ValueError(f"label {sample.label} is {label.shape[1]}x{label.shape[0]} but image "
                         f"{sample.image} is {photo.width}x{photo.height}; they must match")
    seg = segment(model, photo, cfg, image_size=image_size, original_size=False, progress=False)
    return {"gt": label_to_model(label, image_size).astype(np.int32),
            "emerdiff": seg.model_labels.numpy().astype(np.int16),
            "bilinear": upsample_bilinear(seg.lowres_labels, image_size).numpy().astype(np.int16),
            "lowres": seg.lowres_labels.numpy().astype(np.int16),
            "mask_embeddings": seg.mask_embeddings.numpy().astype(np.float32)}


def compute_openvocab(clip, text_embeddings, sample: Sample, record: dict,
                      image_size: int) -> dict:
    """Open-vocabulary class maps (S, S) int16 for EmerDiff masks, bilinear masks and CLIP alone."""
    import torch

    from ..images import open_image, prepare_image
    from .openvocab import classify_masks, classify_pixels

    pixels = prepare_image(open_image(sample.image).convert("RGB"), image_size).pixels
    dense = clip.dense_embeddings(pixels).cpu()
    out = {}
    for method in ("emerdiff", "bilinear"):
        labels = torch.from_numpy(record[method].astype(np.int64))
        out[method] = classify_masks(dense, labels, text_embeddings).numpy().astype(np.int16)
    out["dense"] = classify_pixels(dense, text_embeddings, (image_size,) * 2).numpy()
    out["dense"] = out["dense"].astype(np.int16)
    return out


def _fingerprint(model, dataset, cfg, image_size, clip_id, clip_size) -> dict:
    return {"dataset": dataset.name, "root": str(Path(dataset.root).resolve()),
            "num_classes": dataset.num_classes, "ignore_index": dataset.ignore_index,
            "model_id": model.model_id, "revision": model.revision, "image_size": image_size,
            "config": cfg.to_dict(), "open_vocab": {"clip_model": clip_id, "clip_size": clip_size}}


def _check_run_file(out: Path, fingerprint: dict, open_vocab: bool) -> None:
    """The records under OUT must come from the same settings; otherwise say which differ."""
    path = out / "run.json"
    if path.exists():
        previous = json.loads(path.read_text())
        keys = [k for k in fingerprint if k != "open_vocab" and previous.get(k) != fingerprint[k]]
        if open_vocab and previous.get("open_vocab", {}).get("clip_model") not in (
                None, fingerprint["open_vocab"]["clip_model"]):
            keys.append("open_vocab")
        if keys:
            raise ValueError(f"--out {out} holds records made with other settings ({keys}); "
                             f"use a new --out or the same settings to resume")
        if open_vocab and previous.get("open_vocab", {}).get("clip_model") is None:
            path.write_text(json.dumps(fingerprint, indent=2))
        return
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(fingerprint, indent=2))


def make_state(device: str | None = None):
    """``accelerate.PartialState`` for this process, also on machines without an accelerator.

    Under ``torchrun``/``accelerate launch`` without a GPU, ``PartialState()`` alone ignores
    WORLD_SIZE and every process would believe it is alone (and compute every image), so CPU
    runs ask for the gloo CPU backend explicitly.
    """
    import torch
    from accelerate import PartialState

    has_accelerator = (torch.accelerator.is_available() if hasattr(torch, "accelerator")
                       else torch.cuda.is_available())
    return PartialState(cpu=(device == "cpu") or not has_accelerator)


def evaluate(model, dataset: SegmentationDataset, cfg, out: str | Path, *,
             image_size: int = 512, protocols: Sequence[str] = ("hungarian", "modified",
                                                               "traditional"),
             limit: int | None = None, clip=None, clip_id: str | None = None,
             progress: bool = True, state=None) -> dict | None:
    """Scores ``protocols`` on the first ``limit`` images of ``dataset``; resumable.

    Args:
        model: an :class:`emerdiff_lab.EmerDiffModel`.
        dataset: from :func:`emerdiff_lab.evaluation.datasets.open_dataset`.
        cfg: the ``EmerDiffConfig`` (``num_masks`` <= feature grid cells: 16 for the tiny model at
            128 px).
        out: output folder; existing records there are reused.
        image_size: side S of the square the model sees; every method is scored at S x S.
        protocols: subset of :data:`PROTOCOLS`.
        limit: number of images (None: all); the dataset's first images in id order.
        clip: a :class:`~emerdiff_lab.evaluation.openvocab.DenseCLIP`, required by "open-vocab".
        clip_id: the CLIP model's name, recorded in run.json.
        progress: tqdm bar with ETA on the main process.
        state: an ``accelerate.PartialState`` (default: :func:`make_state`, which reads the
            torchrun / accelerate launch environment variables).

    Returns:
        The summary dict (also written to OUT/summary.json) on the main process, None elsewhere.
    """
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    protocols = tuple(dict.fromkeys(protocols))
    unknown = set(protocols) - set(PROTOCOLS)
    if unknown or not protocols:
        raise ValueError(f"protocols must be a non-empty subset of {PROTOCOLS}, got {protocols}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of images, got {limit}")
    open_vocab = "open-vocab" in protocols
    if open_vocab and clip is None:
        raise ValueError("the open-vocab protocol needs a DenseCLIP model (clip=..., "
                         "--clip-model on the command line)")
    if open_vocab and not dataset.class_names:
        raise ValueError(f"the open-vocab protocol needs class names; dataset {dataset.name!r} "
                         f"has none (pass --class-names FILE for a folder dataset)")
    state = state or make_state(str(model.device))
    out = Path(out)
    fingerprint = _fingerprint(model, dataset, cfg, image_size, clip_id,
                               getattr(clip, "input_size", None))
    if state.is_main_process:
        _check_run_file(out, fingerprint, open_vocab)
        (out / "records").mkdir(parents=True, exist_ok=True)
    state.wait_for_everyone()

    samples = list(dataset.samples[:limit])

    def missing(sample: Sample) -> bool:
        return not record_path(out, sample).exists() or (
            open_vocab and not record_path(out, sample, "openvocab").exists())

    pending = [s for s in samples if missing(s)]
    text = clip.text_embeddings(dataset.class_names).cpu() if open_vocab and pending else None
    written = []
    with state.split_between_processes(pending) as mine:
        bar = tqdm(mine, desc=f"evaluate {dataset.name} [{state.process_index}]", unit="image",
                   disable=not (progress and state.is_local_main_process))
        for sample in bar:
            path = record_path(out, sample)
            if path.exists():
                record = _load(path)
            else:
                record = compute_record(model, dataset, sample, cfg, image_size)
                _save_atomic(path, record)
            if open_vocab and not record_path(out, sample, "openvocab").exists():
                _save_atomic(record_path(out, sample, "openvocab"),
                             compute_openvocab(clip, text, sample, record, image_size))
            written.append(sample.id)
    state.wait_for_everyone()
    # Gathering ids (not arrays) keeps the traffic small; the records travel through OUT.
    written = gather_object(written) if state.num_processes > 1 else written
    if not state.is_main_process:
        return None
    absent = [s.id for s in samples if missing(s)]
    if absent:
        raise FileNotFoundError(f"{len(absent)} record(s) are missing under {out}/records "
                                f"(e.g. {absent[:3]}): with several nodes, --out must be a "
                                f"folder every node sees")
    summary = summarize(model, dataset, cfg, out, samples, protocols, image_size, fingerprint)
    summary["computed_this_run"] = len(written)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def summarize(model, dataset, cfg, out: Path, samples: list[Sample], protocols, image_size,
              fingerprint: dict) -> dict:
    """Runs every protocol over the stored records and writes summary.json and summary.md."""
    from ..segmentation import provenance

    def records(part: str = ""):
        return lambda: (_load(record_path(out, s, part)) for s in samples)

    def openvocab_records():
        for sample in samples:
            record = _load(record_path(out, sample, "openvocab"))
            record["gt"] = _load(record_path(out, sample))["gt"]
            yield record

    args = (dataset.num_classes, dataset.ignore_index)
    results = {}
    for protocol in protocols:
        if protocol == "hungarian":
            results[protocol] = P.hungarian(records(), *args)
        elif protocol == "modified":
            results[protocol] = P.modified(records(), *args)
        elif protocol == "traditional":
            results[protocol] = P.traditional(records(), *args, seed=cfg.seed)
        else:
            results[protocol] = P.direct(openvocab_records, *args,
                                         methods=("emerdiff", "bilinear", "dense"))
    versions = dict(provenance(model)["versions"])
    for package in ("accelerate", "scipy", "numpy"):
        try:
            from importlib.metadata import version
            versions[package] = version(package)
        except Exception:  # noqa: BLE001 - a missing version is not worth failing a run
            versions[package] = None
    summary = {**_clean(results), "dataset": {"name": dataset.name, "root": str(dataset.root),
                                               "num_classes": dataset.num_classes,
                                               "ignore_index": dataset.ignore_index,
                                               "num_images": len(samples)},
               "model_id": model.model_id, "random_weights": model.random_weights,
               "image_size": image_size, "config": cfg.to_dict(), "versions": versions,
               "label_policy": LABEL_POLICY, "open_vocab": fingerprint["open_vocab"],
               "metric_units": "fractions in [0, 1]; summary.md shows percent"}
    (out / "summary.md").write_text(markdown_table(summary, protocols))
    return summary


def _clean(value):
    """NaN is not JSON: absent scores become null."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def markdown_table(summary: dict, protocols) -> str:
    """summary.md: METHOD.md's table layout (mIoU in percent), then pixel accuracy."""
    data = summary["dataset"]
    setting = f"{data['name']} ({data['num_images']} images, {summary['image_size']} px)"

    def pct(value):
        return "n/a" if value is None else f"{100 * value:.1f}"

    lines = [f"# EmerDiff evaluation: {data['name']}, model {summary['model_id']}", "",
             "| table | setting | EmerDiff | reference |", "|---|---|---|---|"]
    for protocol in protocols:
        scores = summary[protocol]
        reference = f"SD bilinear {pct(scores['bilinear']['miou'])}"
        if "dense" in scores:
            reference += f"; CLIP alone {pct(scores['dense']['miou'])}"
        lines.append(f"| {_TABLE[protocol]} | {setting}, {protocol} protocol, mIoU | "
                     f"{pct(scores['emerdiff']['miou'])} | {reference} |")
    lines += ["", "| protocol | EmerDiff pixel accuracy | SD bilinear pixel accuracy |",
              "|---|---|---|"]
    for protocol in protocols:
        scores = summary[protocol]
        lines.append(f"| {protocol} | {pct(scores['emerdiff']['pixel_accuracy'])} | "
                     f"{pct(scores['bilinear']['pixel_accuracy'])} |")
    if summary.get("random_weights"):
        lines += ["", ("The model has random weights: these numbers test the pipeline, not "
                       "the method.")]
    lines += ["", f"Ground-truth labels: {summary['label_policy']}.", ""]
    return "\n".join(lines)
