"""Dataset-scale evaluation: per-image records written as produced, resumable, split by accelerate.

Layout of ``OUT``::

    run.json                 the settings the records were made with; a rerun must match them
    records/<id>.npz         per image: gt, emerdiff, bilinear, lowres, mask_embeddings, and
                             meta: what the record was computed from (image and label file
                             hashes, config, model id, weights hash, image size, label mapping)
    records/<id>.openvocab.npz  per image, open-vocabulary class maps (only with that protocol)
    summary.json, summary.md the scores of every protocol, EmerDiff and the bilinear baseline

Every file is written atomically (temporary file, then rename), so a killed run leaves only
whole records; the same command started again checks each record against what it would be
computed from now and computes only what is missing or out of date (an edited image or label,
other weights). A corrupt record is moved aside to ``<id>.npz.corrupt`` and recomputed; a
missing or corrupt ``run.json`` is rebuilt from the records.
With several processes (``accelerate launch``/``torchrun``) ``PartialState`` splits the pending
images between processes; every process writes its records under ``OUT`` (a folder all of them
see), and the main process computes the summary once they all finished.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
import zipfile
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import check_blur_sigma
from ..images import check_model_size
from ..io import atomic_file, write_text
from . import protocols as P
from .datasets import Sample, SegmentationDataset, label_to_model

PROTOCOLS = ("hungarian", "modified", "traditional", "open-vocab")
LABEL_POLICY = ("resized (shorter side to image_size, nearest neighbour) and centre-cropped "
                "exactly like the image; every method is scored on that image_size x image_size "
                "square")
_TABLE = {"hungarian": "1", "traditional": "1", "modified": "2", "open-vocab": "3"}


# Version of the record layout; records of another version are recomputed.
RECORD_FORMAT = 2
RECORD_KEYS = ("gt", "emerdiff", "bilinear", "lowres", "mask_embeddings")
OPENVOCAB_KEYS = ("emerdiff", "bilinear", "dense")
# run.json keys that must match for records to be reused. The dataset root is not among them:
# records carry hashes of their image and label files, so a moved dataset is still recognised.
COMPARED_SETTINGS = ("dataset", "num_classes", "ignore_index", "label_lookup", "model_id",
                     "revision", "weights_sha256", "image_size", "config")


class CorruptRecordError(ValueError):
    """A record file that cannot be read back (truncated, overwritten, not a record)."""


def record_path(out: Path, sample: Sample, part: str = "") -> Path:
    return Path(out) / "records" / f"{sample.id}{'.' + part if part else ''}.npz"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(model) -> str:
    """Hex SHA-256 over every parameter and buffer of the model's networks (names, dtypes,
    shapes and bytes), so that records made with other weights, or another dtype, are told
    apart even under the same model id (a re-trained local folder, a new hub revision)."""
    import torch

    digest = hashlib.sha256()
    for part in ("unet", "vae", "text_encoder"):
        module = getattr(model, part, None)
        if module is None:
            continue
        for name, tensor in sorted(module.state_dict().items()):
            tensor = tensor.detach().cpu().contiguous().reshape(-1)
            # torch.compile wrappers add _orig_mod to names; the weights are the same.
            name = name.replace("_orig_mod.", "")
            digest.update(f"{part}.{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _save_atomic(path: Path, arrays: dict, meta: dict | None = None) -> None:
    # Rename is atomic on POSIX: a killed process never leaves a half-written record behind,
    # and a failed write (full disk) removes its temporary file.
    if meta is not None:
        arrays = {**arrays, "meta": np.array(json.dumps(meta, sort_keys=True))}
    with atomic_file(path) as handle:
        np.savez_compressed(handle, **arrays)


def _load(path: Path) -> dict:
    """A record's arrays (without its meta)."""
    with np.load(path) as data:
        return {key: data[key] for key in data.files if key != "meta"}


def read_record(path: Path, keys: Sequence[str] = RECORD_KEYS) -> tuple[dict, dict | None]:
    """(arrays, meta) of a record; meta is None for a record written before records described
    themselves. Every array is read, so a damaged file is found here, not in the summary.

    Raises:
        CorruptRecordError: the file cannot be read or lacks one of ``keys``; names the file.
    """
    if not zipfile.is_zipfile(path):  # np.load would guess "pickled data" and say so
        raise CorruptRecordError(f"record {str(path)!r} is corrupt (not a .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
        meta = json.loads(str(arrays.pop("meta"))) if "meta" in arrays else None
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, zlib.error) as error:
        raise CorruptRecordError(f"record {str(path)!r} is corrupt "
                                 f"({type(error).__name__}: {error})") from error
    absent = [key for key in keys if key not in arrays]
    if absent:
        raise CorruptRecordError(f"record {str(path)!r} is corrupt: it lacks {absent}")
    return arrays, meta


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
    try:
        seg = segment(model, photo, cfg, image_size=image_size, original_size=False,
                      progress=False)
    except (ValueError, OSError) as error:  # say which image, the message alone may not
        kind = OSError if isinstance(error, OSError) else ValueError
        raise kind(f"image {str(sample.image)!r}: {error}") from error
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


def _settings(model, dataset, cfg, image_size: int) -> dict:
    """What every record of a run is computed from, besides its own image and label."""
    lookup = None if dataset.lookup is None else hashlib.sha256(
        np.ascontiguousarray(dataset.lookup, dtype=np.int64).tobytes()).hexdigest()
    return {"dataset": dataset.name, "num_classes": dataset.num_classes,
            "ignore_index": dataset.ignore_index, "label_lookup": lookup,
            "model_id": model.model_id, "revision": model.revision,
            "weights_sha256": weights_sha256(model), "image_size": image_size,
            "config": cfg.to_dict()}


def _fingerprint(settings: dict, dataset, clip_id, clip_size) -> dict:
    return {**settings, "root": str(Path(dataset.root).resolve()),
            "open_vocab": {"clip_model": clip_id, "clip_size": clip_size}}


def record_source(sample: Sample, settings: dict) -> dict:
    """The meta a record of ``sample`` made now would carry: what it is computed from."""
    return {"format": RECORD_FORMAT, "id": sample.id,
            "image_sha256": file_sha256(sample.image), "label_sha256": file_sha256(sample.label),
            "settings": settings}


def openvocab_source(source: dict, clip_id, clip_size, class_names) -> dict:
    """The meta of an open-vocabulary record: its base record's source, CLIP and class names."""
    return {"format": RECORD_FORMAT, "record": source, "clip_model": clip_id,
            "clip_size": clip_size, "class_names": list(class_names or ())}


def _stale_reason(meta: dict | None, expected: dict) -> str:
    """Why a readable record's meta differs from what it would be computed from now."""
    if meta is None or meta.get("format") != expected["format"]:
        return "written by an older version"
    if "record" in expected:  # an open-vocabulary record
        if meta.get("record") != expected["record"]:
            return "its base record changed"
        return "made with another CLIP model, size or class names"
    if meta.get("settings") != expected["settings"]:
        ours, theirs = expected["settings"], meta.get("settings") or {}
        keys = [key for key in ours if theirs.get(key) != ours[key]]
        return f"made with other settings ({', '.join(keys)})"
    for key, what in (("image_sha256", "image"), ("label_sha256", "label")):
        if meta.get(key) != expected[key]:
            return f"{what} file changed"
    return "made from other inputs"


def _quarantine(path: Path) -> Path:
    """Moves a corrupt file aside to ``<name>.corrupt`` (numbered if taken) and returns where."""
    target = path.with_name(path.name + ".corrupt")
    number = 1
    while target.exists():
        target = path.with_name(f"{path.name}.corrupt.{number}")
        number += 1
    os.replace(path, target)
    return target


@dataclass
class _Plan:
    """What a run must compute: per pending sample id, the parts ("record", "openvocab")."""

    todo: dict[str, list[str]] = field(default_factory=dict)
    stale: Counter = field(default_factory=Counter)
    corrupt: list[str] = field(default_factory=list)


def _plan(out: Path, samples: list[Sample], settings: dict, open_vocab: bool,
          openvocab_args: tuple) -> _Plan:
    """Checks every existing record against what it would be computed from now; moves corrupt
    ones aside (each named in a warning). Main process only: it may move files."""
    plan = _Plan()
    for sample in samples:
        source = record_source(sample, settings)
        parts = [("record", record_path(out, sample), source, RECORD_KEYS)]
        if open_vocab:
            parts.append(("openvocab", record_path(out, sample, "openvocab"),
                          openvocab_source(source, *openvocab_args), OPENVOCAB_KEYS))
        for part, path, expected, keys in parts:
            if plan.todo.get(sample.id) == ["record"] and part == "openvocab":
                plan.todo[sample.id].append(part)  # a new base record needs a new class map
                continue
            if not path.exists():
                plan.todo.setdefault(sample.id, []).append(part)
                continue
            try:
                _, meta = read_record(path, keys)
            except CorruptRecordError as error:
                moved = _quarantine(path)
                warnings.warn(f"{error}; moved to {moved.name} and recomputed", stacklevel=3)
                plan.corrupt.append(path.name)
                plan.todo.setdefault(sample.id, []).append(part)
                continue
            if meta != expected:
                plan.stale[_stale_reason(meta, expected)] += 1
                plan.todo.setdefault(sample.id, []).append(part)
    return plan


def _read_run_file(path: Path) -> dict | None:
    """run.json as a dict; None if it is missing. A corrupt one is moved aside with a warning
    (it is then rebuilt from the records)."""
    if not path.exists():
        return None
    try:
        previous = json.loads(path.read_text())
        if not isinstance(previous, dict):
            raise ValueError(f"expected a JSON object, got {type(previous).__name__}")
        return previous
    except (ValueError, UnicodeDecodeError) as error:
        moved = _quarantine(path)
        warnings.warn(f"{str(path)!r} is corrupt ({error}); moved to {moved.name} and rebuilt "
                      f"from the records", stacklevel=3)
        return None


def _settings_from_records(out: Path) -> dict | None:
    """The settings most readable records under ``out`` were made with (None if no record
    describes itself): what a lost run.json said."""
    counts: Counter = Counter()
    for path in sorted((out / "records").glob("*.npz")):
        if path.name.endswith(".openvocab.npz"):
            continue
        try:
            _, meta = read_record(path)
        except CorruptRecordError:
            continue  # the plan moves it aside and says so
        if meta and isinstance(meta.get("settings"), dict):
            counts[json.dumps(meta["settings"], sort_keys=True)] += 1
    return json.loads(counts.most_common(1)[0][0]) if counts else None


def _differences(previous: dict, current: dict) -> list[str]:
    """The compared settings that differ, config fields spelled out (``num_masks: 6 there,
    3 now``). Keys an older run.json lacks are not counted: its records are rechecked one by
    one against their own descriptions."""
    found = []
    for key in COMPARED_SETTINGS:
        if key not in previous or previous[key] == current[key]:
            continue
        if key == "config" and isinstance(previous[key], dict):
            # Fields added to EmerDiffConfig since that run are not held against it.
            fields = [f"{name}: {previous[key][name]!r} there, {value!r} now"
                      for name, value in current[key].items()
                      if name in previous[key] and previous[key][name] != value]
            if fields:
                found.append(f"config ({'; '.join(fields)})")
        else:
            found.append(key)
    return found


def _check_run_file(out: Path, fingerprint: dict, open_vocab: bool) -> None:
    """The records under OUT must come from the same settings; otherwise say which differ.

    A missing or corrupt run.json is rebuilt from the records' own descriptions. Without any
    record (a first run that failed before writing one) the new settings simply replace the
    old, so that a corrected rerun on the same OUT is not refused.
    """
    path = out / "run.json"
    out.mkdir(parents=True, exist_ok=True)
    previous = _read_run_file(path)
    has_records = any((out / "records").glob("*.npz"))
    rebuilt = False
    if previous is None and has_records:
        previous, rebuilt = _settings_from_records(out), True
    if previous is not None and has_records:
        keys = _differences(previous, fingerprint)
        old_clip = (previous.get("open_vocab") or {}).get("clip_model")
        if open_vocab and old_clip not in (None, fingerprint["open_vocab"]["clip_model"]):
            keys.append("open_vocab clip_model")
        if keys:
            source = " (run.json rebuilt from the records)" if rebuilt else ""
            raise ValueError(f"--out {out} holds records made with other settings{source}: "
                             f"{', '.join(keys)}; use a new --out or the same settings to resume")
    merged = dict(fingerprint)
    if not open_vocab and previous and (previous.get("open_vocab") or {}).get("clip_model"):
        merged["open_vocab"] = previous["open_vocab"]  # what an earlier open-vocab run used
    write_text(path, json.dumps(merged, indent=2))


def _prepare_out(out: Path, fingerprint: dict, samples: list[Sample], settings: dict,
                 open_vocab: bool, openvocab_args: tuple) -> _Plan:
    """Main process, before any work: checks run.json, removes leftovers of killed runs and
    plans what to compute, saying how many records no longer match their inputs."""
    _check_run_file(out, fingerprint, open_vocab)
    (out / "records").mkdir(parents=True, exist_ok=True)
    _remove_temporary_files(out)
    plan = _plan(out, samples, settings, open_vocab, openvocab_args)
    if plan.stale:
        reasons = ", ".join(f"{n} {why}" for why, n in plan.stale.most_common())
        warnings.warn(f"recomputing {sum(plan.stale.values())} record(s) that no longer match "
                      f"their inputs: {reasons}", stacklevel=3)
    return plan


def _remove_temporary_files(out: Path) -> int:
    """Deletes the temporary files a killed run left (``.<name>.<pid>.tmp``); returns how many.
    Only the main process calls it, before any process of this run writes."""
    removed = 0
    for folder in (out, out / "records"):
        for tmp in folder.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


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


def close_process_group() -> None:
    """Destroys this process's ``torch.distributed`` process group, if one was started.

    Each process calls it once it has no collective left: a process that exits with its gloo
    group still alive may abort in the C++ teardown (SIGABRT, "terminate called without an active
    exception", seen now and then under torchrun on CPU), which torchrun reports as a failed run
    although every record and the summary were written.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


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
        out: output folder. Records there are reused when they match what they would be
            computed from now (their image and label files, settings and weights); the others
            are recomputed, corrupt ones after being moved aside (see the module docstring).
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
        ``summary["recomputed"]`` counts the stale and corrupt records recomputed, with why.
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
    check_model_size(image_size, "image_size")
    check_blur_sigma(cfg.blur_sigma, image_size)
    state = state or make_state(str(model.device))
    out = Path(out)
    samples = list(dataset.samples[:limit])
    settings = _settings(model, dataset, cfg, image_size)
    clip_size = getattr(clip, "input_size", None)
    fingerprint = _fingerprint(settings, dataset, clip_id, clip_size)
    openvocab_args = (clip_id, clip_size, dataset.class_names)
    plan, failure = None, None
    if state.is_main_process:
        try:
            plan = _prepare_out(out, fingerprint, samples, settings, open_vocab, openvocab_args)
        except Exception as error:
            if state.num_processes == 1:
                raise
            failure = error  # told to the other processes first, so that none waits for ever
    if state.num_processes > 1:
        # One plan for every process: the main one may have moved corrupt records aside.
        from accelerate.utils import broadcast_object_list

        message = None if failure is None else str(failure)
        plan, message = broadcast_object_list([plan, message])
        if failure is not None:
            raise failure
        if message is not None:
            raise ValueError(f"the main process stopped before any work: {message}")
    todo = plan.todo
    pending = [s for s in samples if s.id in todo]
    text = clip.text_embeddings(dataset.class_names).cpu() if open_vocab and pending else None
    written = []
    with state.split_between_processes(pending) as mine:
        bar = tqdm(mine, desc=f"evaluate {dataset.name} [{state.process_index}]", unit="image",
                   disable=not (progress and state.is_local_main_process))
        for sample in bar:
            source = record_source(sample, settings)
            path = record_path(out, sample)
            if "record" in todo[sample.id]:
                record = compute_record(model, dataset, sample, cfg, image_size)
                _save_atomic(path, record, source)
            else:
                record = _load(path)
            if "openvocab" in todo[sample.id]:
                _save_atomic(record_path(out, sample, "openvocab"),
                             compute_openvocab(clip, text, sample, record, image_size),
                             openvocab_source(source, *openvocab_args))
            written.append(sample.id)
    state.wait_for_everyone()
    # Gathering ids (not arrays) keeps the traffic small; the records travel through OUT.
    written = gather_object(written) if state.num_processes > 1 else written
    if not state.is_main_process:
        return None
    absent = [s.id for s in samples if not record_path(out, s).exists() or (
        open_vocab and not record_path(out, s, "openvocab").exists())]
    if absent:
        raise FileNotFoundError(f"{len(absent)} record(s) are missing under {out}/records "
                                f"(e.g. {absent[:3]}): with several nodes, --out must be a "
                                f"folder every node sees")
    summary = summarize(model, dataset, cfg, out, samples, protocols, image_size, fingerprint)
    summary["computed_this_run"] = len(written)
    summary["recomputed"] = {"stale": sum(plan.stale.values()), "stale_reasons": dict(plan.stale),
                             "corrupt": len(plan.corrupt), "corrupt_files": plan.corrupt}
    write_text(out / "summary.json", json.dumps(summary, indent=2))
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
    write_text(out / "summary.md", markdown_table(summary, protocols))
    return summary


def _clean(value):
    """NaN is not JSON: absent scores become null."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def markdown_table(summary: dict, protocols) -> str:
    """summary.md: the paper's table layout (mIoU in percent), then pixel accuracy."""
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
    lines += ["", *P.boundary_table(summary, protocols, summary["image_size"], pct)]
    if summary.get("random_weights"):
        lines += ["", ("The model has random weights: these numbers test the pipeline, not "
                       "the method.")]
    lines += ["", f"Ground-truth labels: {summary['label_policy']}.", ""]
    return "\n".join(lines)
