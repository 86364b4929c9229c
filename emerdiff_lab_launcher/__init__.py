"""The ``emerdiff-lab`` console script's entry point (``[project.scripts]`` in pyproject.toml).

It lives outside the ``emerdiff_lab`` package on purpose: importing anything inside the package
runs ``emerdiff_lab/__init__.py``, which imports torch and diffusers (seconds). A Ctrl-C in those
seconds used to end in a 20-40 line traceback, because ``emerdiff_lab.cli.main`` had not yet
installed its handling. This module imports nothing heavy, installs a SIGINT handler first, and
only then imports the command line.
"""

from __future__ import annotations

import os
import signal
import sys

# The same line emerdiff_lab.cli.main prints (tests/test_reliability_signals.py checks both).
INTERRUPTED = "emerdiff-lab: interrupted (Ctrl-C); results already written are kept"


def main() -> int:
    """Runs ``emerdiff_lab.cli.main`` with Ctrl-C covered from the first millisecond."""
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:  # not where SIGINT is ignored (nohup, `&`)
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    from emerdiff_lab.cli import main as run_command

    if previous is signal.default_int_handler:
        # From here on Ctrl-C is a KeyboardInterrupt again, which main() turns into the same
        # line after the writes in progress have removed their temporary files.
        signal.signal(signal.SIGINT, previous)
    return run_command()


def _interrupted_while_starting(signum, frame) -> None:
    # Nothing has been written while the modules import, so there is nothing to clean up:
    # one line and exit 130 (128 + SIGINT) at once, whatever import is in progress.
    sys.stderr.write(INTERRUPTED + "\n")
    sys.stderr.flush()
    os._exit(130)
