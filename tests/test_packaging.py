"""The compatibility run pins exactly the lower bounds that pyproject.toml declares."""

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "oldest_requirements.py"


@pytest.fixture(scope="module")
def oldest():
    spec = importlib.util.spec_from_file_location("oldest_requirements", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pins_are_the_declared_lower_bounds(oldest):
    requirements = oldest.declared_requirements()
    for name in ("diffusers", "transformers", "accelerate"):
        bound = oldest.lower_bound(name, requirements)
        assert f"{name}>={bound}" in [r.replace(" ", "") for r in requirements]


def test_missing_lower_bound_is_an_error(oldest):
    assert oldest.lower_bound("torch", ["torch>=2.1,<3"]) == "2.1"
    with pytest.raises(ValueError, match="no 'scipy>=' lower bound"):
        oldest.lower_bound("scipy", ["scipy"])
    with pytest.raises(ValueError):
        oldest.lower_bound("diff", ["diffusers>=0.30"])  # a prefix is not the package
