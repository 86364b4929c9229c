"""Every file is written whole or not at all, and Ctrl-C is one line from the first millisecond
(issue 20): the one atomic writer (emerdiff_lab.io.atomic_file), the files routed through it, a
SIGINT while a label PNG is being written and while torch is still importing.

The Ctrl-C cases run the real console script (tests/console_script.py) and send SIGINT at a
controlled point: the writer's test hook (``EMERDIFF_TEST_PAUSE_BEFORE_WRITE``) or an import
hook that pauses the import of torch; each writes a file once it is paused, which the test waits
for, so nothing races a timer.
"""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import console_script
import emerdiff_lab as edl
from emerdiff_lab import io

INTERRUPTED = "emerdiff-lab: interrupted (Ctrl-C); results already written are kept\n"


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the command ended (code {process.returncode}) before the pause; "
                        f"stderr: {err[-2000:]}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the command never reached the pause")
        time.sleep(0.05)


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob(".*.tmp"))


def _interrupt_saves(monkeypatch, owner, name="save"):
    """``owner.name`` (a serializer) writes a few bytes to its target, then is interrupted."""
    def interrupted(*args, **kwargs):
        target = next(a for a in (*args, *kwargs.values())
                      if hasattr(a, "write") or isinstance(a, (str, Path)))
        if hasattr(target, "write"):
            target.write(b"\x89PNG partial" if "b" in getattr(target, "mode", "b") else "par")
        else:
            Path(target).write_bytes(b"\x89PNG partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(owner, name, interrupted)


def test_the_writer_replaces_only_a_whole_synced_file(tmp_path, monkeypatch):
    target = tmp_path / "result.txt"
    target.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with io.atomic_file(target, "w") as handle:
            handle.write("half of the new")
            raise KeyboardInterrupt
    assert target.read_text() == "old" and _leftovers(tmp_path) == []
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append(("replace", Path(a).parent)),
                                                     real_replace(a, b)))
    io.write_text(target, "new")
    assert target.read_text() == "new" and _leftovers(tmp_path) == []
    assert calls == ["fsync", ("replace", tmp_path)]  # synced first, renamed in the same folder


def test_label_and_overlay_pngs_are_never_left_truncated(tmp_path, monkeypatch):
    labels = np.zeros((8, 8), np.int64)
    photo = Image.new("RGB", (8, 8))
    _interrupt_saves(monkeypatch, Image.Image)
    for write, name in ((lambda p: io.save_label_png(labels, p), "big_labels.png"),
                        (lambda p: io.save_overlay_png(photo, labels, p), "big_overlay.png")):
        with pytest.raises(KeyboardInterrupt):
            write(tmp_path / name)
        assert not (tmp_path / name).exists()
    assert _leftovers(tmp_path) == []


def test_figures_tables_records_and_store_entries_are_never_left_truncated(tmp_path,
                                                                          monkeypatch):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd
    from matplotlib.figure import Figure

    from emerdiff_lab.map_store import MapStore
    from emerdiff_lab.plotting import save_figure

    fig, _ = plt.subplots()
    fig.suptitle("a figure")
    result = {"random_weights": False}
    _interrupt_saves(monkeypatch, Figure, "savefig")
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, tmp_path / "figure.png", result)
    monkeypatch.undo()
    _interrupt_saves(monkeypatch, pd.DataFrame, "to_csv")
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, tmp_path / "figure.png", result, table=pd.DataFrame({"a": [1]}))
    assert (tmp_path / "figure.png").exists()  # the figure was written before the table
    assert not (tmp_path / "figure.csv").exists()
    monkeypatch.undo()
    _interrupt_saves(monkeypatch, np, "savez")
    with pytest.raises(KeyboardInterrupt):
        MapStore(tmp_path).write(tmp_path / "maps-x.npz", torch.zeros(2, 2), torch.zeros(1, 2))
    assert not (tmp_path / "maps-x.npz").exists() and _leftovers(tmp_path) == []
    plt.close(fig)


def test_training_checkpoints_and_weights_go_through_the_writer(tmp_path, monkeypatch):
    from argparse import Namespace

    from emerdiff_lab.toyworld.training import Run

    run = Run(tmp_path, {"net": torch.nn.Linear(2, 2)}, {"net": 1e-3}, Namespace(minutes=1))
    written = []
    real = io.atomic_path

    def recording(path):
        written.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(io, "atomic_path", recording)
    import emerdiff_lab.toyworld.training as training

    monkeypatch.setattr(training, "atomic_path", recording)
    run.save({"w": torch.zeros(2)})
    assert sorted(written) == ["checkpoint.pt", "run.json", "weights.safetensors"]
    assert _leftovers(tmp_path) == []


# Files written outside the writer on purpose: scratch files in a private temporary folder, read
# back at once (tokenizers, the figure kernel's spec), the test hook's own signal file, and the
# training loss log, which is appended to row by row (a cut last row is all a kill can leave).
_WRITES_ALLOWED = {
    ("tiny.py", "write_text"), ("tiny_pixart.py", "save_pretrained"),
    ("figures/runner.py", "write_text"), ("io.py", "write_text"),
    ("toyworld/training.py", "open("),
}
_WRITE_CALLS = re.compile(r"\.(write_text|write_bytes|savefig|to_csv|save_pretrained)\(|"
                          r"\bnp\.savez?(_compressed)?\(|\btorch\.save\(|\bsave_file\(|"
                          r"\bopen\([^)]*['\"][wa]b?['\"]")


def _direct_writes(root: Path, allowed: set) -> list[str]:
    """``file:line: code`` of each write under ``root`` that does not go through the writer,
    except the ``(relative path, call)`` pairs in ``allowed``."""
    direct = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        lines = path.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            code = line.split("#")[0]
            for match in _WRITE_CALLS.finditer(code):
                call = match.group(1) or ("open(" if "open(" in match.group(0)
                                          else match.group(0).rstrip("("))
                if (relative, call) in allowed:
                    continue
                # A serializer given the writer's handle or temporary path, or called in the
                # block the writer opens on the line before, is routed through it.
                if re.search(r"\b(handle|tmp)\b", code) or "with atomic_" in lines[number - 2]:
                    continue
                direct.append(f"{relative}:{number}: {line.strip()}")
    return direct


def test_every_file_the_package_writes_goes_through_the_one_writer():
    direct = _direct_writes(Path(edl.__file__).parent, _WRITES_ALLOWED)
    assert direct == [], "write these through emerdiff_lab.io.atomic_file:\n" + "\n".join(direct)


# The maintainer scripts' writes outside the writer, on purpose: the loss logs and the v2
# evaluation's per-scene JSON lines, appended to so that a stopped run resumes (a kill can cut
# only the last line), and train_toyworld_v2.py's cache chunks, whose visible ".tmp" name tells
# a second (--reverse) worker that a chunk is taken.
_SCRIPT_WRITES_ALLOWED = {
    ("scripts/train_toyworld.py", "open("), ("scripts/train_toyworld_latent_unet.py", "open("),
    ("scripts/train_toyworld_vae.py", "open("), ("scripts/eval_toyworld_v2.py", "open("),
    ("scripts/train_toyworld_v2.py", "torch.save"),
}


def test_every_file_the_scripts_and_benchmarks_write_goes_through_the_one_writer():
    root = Path(__file__).resolve().parents[1]
    direct = [f"{folder}/{entry}" for folder in ("scripts", "benchmarks")
              for entry in _direct_writes(root / folder, {
                  (relative.removeprefix(f"{folder}/"), call)
                  for relative, call in _SCRIPT_WRITES_ALLOWED})]
    assert direct == [], "write these through emerdiff_lab.io.atomic_file:\n" + "\n".join(direct)


def _picture(path: Path, size=(64, 48), colour=(200, 40, 40)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def test_ctrl_c_while_a_label_png_is_written_leaves_no_truncated_file(tmp_path):
    image, out, paused = _picture(tmp_path / "big.png"), tmp_path / "out", tmp_path / "paused"
    process = console_script.start("segment", image, "--out", out, *console_script.SMALL,
                                   EMERDIFF_TEST_PAUSE_BEFORE_WRITE=str(paused),
                                   EMERDIFF_TEST_PAUSE_ON="_labels.png")
    _wait_for(paused, process)
    assert Path(paused.read_text()) == out / "big_labels.png"
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err == INTERRUPTED
    assert not (out / "big_labels.png").exists() and _leftovers(out) == []
    assert edl.Segmentation.load(out / "big").labels.shape == (48, 64)  # written before: whole


def test_ctrl_c_while_torch_imports_is_one_line_and_exit_130(tmp_path):
    """An import hook (sitecustomize, first on the path) pauses the import of torch and says so
    in a file; SIGINT then arrives inside ``import torch``."""
    paused = tmp_path / "paused"
    (tmp_path / "sitecustomize.py").write_text(f'''
import sys, time
from pathlib import Path

class PauseTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            sys.meta_path.remove(self)
            Path({str(paused)!r}).write_text("importing torch")
            time.sleep(120)
        return None

sys.meta_path.insert(0, PauseTorch())
''')
    process = console_script.start("segment", "x.png", "--out", tmp_path / "out",
                                   PYTHONPATH=os.pathsep.join([str(tmp_path),
                                                               str(console_script.REPO)]))
    _wait_for(paused, process, timeout=60)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err == INTERRUPTED


def test_the_console_script_starts_without_importing_torch():
    module, function = console_script.entry_point()
    assert (module, function) == ("emerdiff_lab_launcher", "main")
    check = (f"import sys, {module}; heavy = [m for m in ('torch', 'emerdiff_lab', 'diffusers') "
             f"if m in sys.modules]; print(heavy); print({module}.INTERRUPTED)")
    done = subprocess.run([sys.executable, "-c", check], env=console_script.environment(),
                          capture_output=True, text=True, check=True)
    heavy, message = done.stdout.splitlines()
    assert heavy == "[]" and message + "\n" == INTERRUPTED
    from setuptools import find_packages

    assert module in find_packages(console_script.REPO, include=["emerdiff_lab*"])
