"""Print pip pins (``name==lowest``) of the named dependencies at the lower bounds that
pyproject.toml declares, so that `make test-compat` tests exactly the declared versions.

    python scripts/oldest_requirements.py diffusers transformers accelerate
    -> diffusers==0.30 transformers==4.40 accelerate==0.30
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def declared_requirements(pyproject: Path = PYPROJECT) -> list[str]:
    """Every requirement string of the project: dependencies and all optional extras."""
    project = tomllib.loads(pyproject.read_text())["project"]
    extras = project.get("optional-dependencies", {}).values()
    return list(project["dependencies"]) + [req for group in extras for req in group]


def lower_bound(name: str, requirements: list[str]) -> str:
    """The version after ``>=`` in the requirement of ``name``; ValueError if there is none."""
    for requirement in requirements:
        match = re.fullmatch(rf"\s*{re.escape(name)}\s*>=\s*([\w.]+)\s*(,.*)?", requirement)
        if match:
            return match.group(1)
    raise ValueError(f"pyproject.toml declares no '{name}>=' lower bound")


def main(names: list[str]) -> None:
    if not names:
        raise SystemExit("usage: oldest_requirements.py NAME [NAME ...]")
    requirements = declared_requirements()
    print(" ".join(f"{name}=={lower_bound(name, requirements)}" for name in names))


if __name__ == "__main__":
    main(sys.argv[1:])
