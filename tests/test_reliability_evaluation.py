"""Evaluation records describe what they were computed from, and a rerun trusts only records
that still match (issue 15): edited labels, lost or corrupt run.json, corrupt records, a failed
first run, leftover temporary files, two images with one id.

The segmentation itself is replaced by a cheap stand-in that derives each record from its label
(so an edited label changes the record): what is tested is the bookkeeping around it, which
test_evaluation_runner.py runs end to end on the tiny model.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import emerdiff_lab as edl
from emerdiff_lab.evaluation import runner
from emerdiff_lab.evaluation.datasets import label_to_model, open_dataset

SIZE = 16
CFG = edl.EmerDiffConfig(num_masks=2)


class FakeModel:
    """What evaluate() reads from a model: ids, device, dtype, and networks to hash."""

    def __init__(self, seed=0):
        torch.manual_seed(seed)
        self.unet, self.vae, self.text_encoder = torch.nn.Linear(3, 2), None, None
        self.model_id, self.revision, self.random_weights = "fake", None, True
        self.device, self.dtype = torch.device("cpu"), torch.float32
        self.default_config = CFG


class Computing:
    """Stands in for runner.compute_record: a record derived from the label; counts calls and
    optionally fails like a bad input."""

    def __init__(self, fail=False):
        self.calls, self.fail = 0, fail

    def __call__(self, model, dataset, sample, cfg, image_size):
        if self.fail:
            raise ValueError(f"label {sample.label} is broken")
        self.calls += 1
        gt = label_to_model(dataset.load_label(sample), image_size).astype(np.int32)
        masks = np.where(gt == 255, 0, gt % 2).astype(np.int16)
        return {"gt": gt, "emerdiff": masks, "bilinear": masks, "lowres": masks[:2, :2],
                "mask_embeddings": np.eye(2, dtype=np.float32)}


def _write_scene(root, stem, value, suffix=".png"):
    Image.fromarray(np.full((SIZE, SIZE, 3), 40 * value, np.uint8)).save(
        root / "images" / f"{stem}{suffix}")
    _write_label(root, stem, value)


def _write_label(root, stem, value):
    label = np.zeros((SIZE, SIZE), np.uint8)
    label[SIZE // 2:] = value % 3
    Image.fromarray(label, mode="L").save(root / "labels" / f"{stem}.png")


@pytest.fixture
def scenes(tmp_path):
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    for index in range(3):
        _write_scene(root, f"scene{index}", index + 1)
    return root


def _run(scenes, out, monkeypatch, compute=None, model=None, cfg=CFG):
    compute = compute or Computing()
    monkeypatch.setattr(runner, "compute_record", compute)
    dataset = open_dataset("folder", scenes, num_classes=3)
    summary = runner.evaluate(model or FakeModel(), dataset, cfg, out, image_size=SIZE,
                              protocols=("hungarian",), progress=False)
    return summary, compute.calls


def test_each_record_stores_what_it_was_computed_from(scenes, tmp_path, monkeypatch):
    model = FakeModel()
    _run(scenes, tmp_path / "out", monkeypatch, model=model)
    _, meta = runner.read_record(tmp_path / "out" / "records" / "scene1.npz")
    assert meta["image_sha256"] == runner.file_sha256(scenes / "images" / "scene1.png")
    assert meta["label_sha256"] == runner.file_sha256(scenes / "labels" / "scene1.png")
    settings = meta["settings"]
    assert settings["config"] == CFG.to_dict() and settings["model_id"] == "fake"
    assert settings["weights_sha256"] == runner.weights_sha256(model)
    assert settings["image_size"] == SIZE and settings["num_classes"] == 3


def test_edited_label_is_recomputed_and_the_run_says_how_many(scenes, tmp_path, monkeypatch):
    out = tmp_path / "out"
    first, calls = _run(scenes, out, monkeypatch)
    assert calls == 3 and first["recomputed"]["stale"] == 0
    _write_label(scenes, "scene1", 4)  # the label of scene1 is edited after the run
    with pytest.warns(UserWarning, match=r"recomputing 1 record.*1 label file changed"):
        second, calls = _run(scenes, out, monkeypatch)
    assert calls == 1
    assert second["recomputed"] == {"stale": 1, "stale_reasons": {"label file changed": 1},
                                    "corrupt": 0, "corrupt_files": []}
    record, _ = runner.read_record(out / "records" / "scene1.npz")
    assert set(np.unique(record["gt"])) == {0, 1}  # the new label's classes (4 % 3 = 1)
    assert second["hungarian"] != first["hungarian"]  # the scores follow the new label


def test_other_weights_under_the_same_model_id_are_refused(scenes, tmp_path, monkeypatch):
    _run(scenes, tmp_path / "out", monkeypatch, model=FakeModel(seed=0))
    with pytest.raises(ValueError, match="other settings.*weights_sha256"):
        _run(scenes, tmp_path / "out", monkeypatch, model=FakeModel(seed=1))


def test_missing_run_json_is_rebuilt_from_the_records(scenes, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _run(scenes, out, monkeypatch, cfg=CFG.replace(num_masks=6))
    (out / "run.json").unlink()
    # The case: K=3 over K=6 records used to recompute nothing and report K=3.
    with pytest.raises(ValueError, match=r"rebuilt from the records.*num_masks: 6 there, 3 now"):
        _run(scenes, out, monkeypatch, cfg=CFG.replace(num_masks=3))
    summary, calls = _run(scenes, out, monkeypatch, cfg=CFG.replace(num_masks=6))
    assert calls == 0 and summary["config"]["num_masks"] == 6
    assert json.loads((out / "run.json").read_text())["config"]["num_masks"] == 6


def test_corrupt_run_json_is_moved_aside_and_rebuilt(scenes, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _run(scenes, out, monkeypatch)
    (out / "run.json").write_text('{"dataset": "folder", "conf')
    with pytest.warns(UserWarning, match=r"run\.json.*corrupt.*moved to run\.json\.corrupt"):
        _, calls = _run(scenes, out, monkeypatch)
    assert calls == 0
    assert (out / "run.json.corrupt").read_text().startswith('{"dataset"')
    assert json.loads((out / "run.json").read_text())["config"] == CFG.to_dict()


def test_corrupt_record_is_named_moved_aside_and_recomputed(scenes, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _run(scenes, out, monkeypatch)
    (out / "records" / "scene2.npz").write_bytes(b"PK\x03\x04 truncated by a full disk")
    with pytest.warns(UserWarning, match=r"scene2\.npz.*corrupt.*moved to scene2\.npz\.corrupt"):
        summary, calls = _run(scenes, out, monkeypatch)
    assert calls == 1
    assert summary["recomputed"]["corrupt"] == 1
    assert summary["recomputed"]["corrupt_files"] == ["scene2.npz"]
    assert (out / "records" / "scene2.npz.corrupt").exists()
    runner.read_record(out / "records" / "scene2.npz")  # readable again


def test_failed_first_run_does_not_block_a_corrected_rerun(scenes, tmp_path, monkeypatch):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="is broken"):
        _run(scenes, out, monkeypatch, compute=Computing(fail=True),
             cfg=CFG.replace(num_masks=5))
    assert (out / "run.json").exists() and not list((out / "records").glob("*.npz"))
    summary, calls = _run(scenes, out, monkeypatch, cfg=CFG.replace(num_masks=4))
    assert calls == 3 and summary["config"]["num_masks"] == 4


def test_temporary_files_are_cleaned_up(scenes, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _run(scenes, out, monkeypatch)
    leftover = out / "records" / ".scene0.npz.4242.tmp"  # from a killed process
    leftover.write_bytes(b"partial")
    _run(scenes, out, monkeypatch)
    assert not leftover.exists()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full_disk)
    with pytest.raises(OSError, match="No space left"):
        runner._save_atomic(out / "records" / "new.npz", {"gt": np.zeros(2)})
    assert not list((out / "records").glob(".*.tmp")) and not (out / "records" / "new.npz").exists()


def test_two_images_with_one_id_are_an_error_naming_both(scenes):
    _write_scene(scenes, "scene0", 1, suffix=".jpg")  # beside scene0.png
    with pytest.raises(ValueError, match=r"scene0\.jpg.*scene0\.png.*same id 'scene0'"):
        open_dataset("folder", scenes, num_classes=3)


def test_cli_reports_recomputed_records(scenes, tmp_path, monkeypatch, capsys):
    from emerdiff_lab.cli import main
    from emerdiff_lab.evaluation import cli as evaluation_cli

    monkeypatch.setattr(evaluation_cli, "load_model_from_args", lambda args: FakeModel())
    monkeypatch.setattr(runner, "compute_record", Computing())
    argv = ["evaluate", "--dataset", "folder", "--root", str(scenes), "--num-classes", "3",
            "--image-size", "64", "--num-masks", "2", "--protocol", "hungarian",
            "--out", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 0
    assert "computed_this_run=3 recomputed_stale=0" in capsys.readouterr().out
    _write_label(scenes, "scene0", 5)
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "computed_this_run=1 recomputed_stale=1 recomputed_corrupt=0" in captured.out
    assert "emerdiff-lab: warning: recomputing 1 record(s)" in captured.err


def test_blur_wider_than_the_image_is_refused_before_anything_is_written(scenes, tmp_path,
                                                                          monkeypatch):
    with pytest.raises(ValueError, match="blur_sigma 100 px is larger than the 16 px image"):
        _run(scenes, tmp_path / "out", monkeypatch, cfg=CFG.replace(blur_sigma=100.0))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_refusal_under_torchrun_stops_every_process(scenes, tmp_path):
    """The main process refuses (other settings); the other one must stop too, not wait."""
    import os
    import subprocess
    import sys

    out = tmp_path / "out"
    (out / "records").mkdir(parents=True)
    (out / "records" / "scene0.npz").write_bytes(b"")  # a record exists: refusal, not reuse
    (out / "run.json").write_text(json.dumps({"config": {"num_masks": 7}}))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node", "2", "-m", "emerdiff_lab.cli", "evaluate",
               "--dataset", "folder", "--root", str(scenes), "--num-classes", "3",
               "--model", "tiny", "--image-size", "64", "--num-masks", "2", "--out", str(out),
               "--quiet"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode != 0
    assert "other settings" in done.stderr and "num_masks: 7 there, 2 now" in done.stderr
    assert "main process stopped before any work" in done.stderr


def test_a_record_without_a_description_is_recomputed_as_written_by_an_older_version(
        scenes, tmp_path, monkeypatch):
    out = tmp_path / "out"
    _run(scenes, out, monkeypatch)
    record, _ = runner.read_record(out / "records" / "scene2.npz")
    runner._save_atomic(out / "records" / "scene2.npz", record)  # no meta: an older version's
    with pytest.warns(UserWarning, match=r"recomputing 1 record.*1 written by an older version"):
        summary, calls = _run(scenes, out, monkeypatch)
    assert calls == 1 and summary["recomputed"]["stale_reasons"] == {
        "written by an older version": 1}
