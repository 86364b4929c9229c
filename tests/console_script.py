"""The real ``emerdiff-lab`` console script, run in a subprocess: the entry point that
pyproject.toml's ``[project.scripts]`` declares, called as pip's generated script calls it, with
this checkout first on the path (so an editable install of another checkout does not interfere).

``SMALL``: the options of a fast segmentation with the tiny model (64 px, K = 2, 5 steps).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--model", "tiny", "--image-size", "64", "--num-masks", "2", "--num-inference-steps",
         "5", "--modulation-timestep", "201", "--quiet"]


def entry_point() -> tuple[str, str]:
    """(module, function) of the ``emerdiff-lab`` script in pyproject.toml."""
    text = (REPO / "pyproject.toml").read_text()
    module, function = re.search(r'^emerdiff-lab\s*=\s*"([\w.]+):(\w+)"', text, re.M).groups()
    return module, function


def command(*args: str) -> list[str]:
    module, function = entry_point()
    script = (f"import sys; from {module} import {function}; sys.argv[0] = 'emerdiff-lab'; "
              f"sys.exit({function}())")
    return [sys.executable, "-c", script, *map(str, args)]


def environment(**extra: str) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.update(extra)
    return env


def run(*args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Runs ``emerdiff-lab ARGS`` to the end; returns the completed process (text output)."""
    return subprocess.run(command(*args), env=environment(**env), capture_output=True,
                          text=True, timeout=timeout, check=False)


def start(*args: str, **env: str) -> subprocess.Popen:
    """Starts ``emerdiff-lab ARGS`` (text pipes for stdout and stderr) with SIGINT at its
    default, as in a terminal: a test suite started in the background (``cmd &``, nohup)
    ignores SIGINT, the child would inherit that, and Python then never sees a Ctrl-C."""
    return subprocess.Popen(command(*args), env=environment(**env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
