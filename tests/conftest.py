"""Shared fixtures: the offline tiny model, small images, and ../shared data when it is present.

Tolerances: compare floats relative to their scale and to the depth of the computation, labels
of random-weight models as agreement fractions, and with exact equality only two runs of the
same computation on the same shapes and thread count. The policy is in tests/README.md; the
named bounds and helpers are in tests/tolerances.py.
"""

import os
from pathlib import Path

# No test may wait on a network that is not there.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Under pytest-xdist (`make test` runs two workers) each worker gets one torch thread unless told
# otherwise: two workers of two threads on 2 cores spin-wait on each other (OpenMP), and the
# suite's results do not depend on the thread count (tests/README.md).
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared"
SHARED = Path(os.environ.get("EMERDIFF_SHARED", SHARED))
SD14_CONFIGS = SHARED / "data" / "sd-v1-4-configs"
VOC14 = SHARED / "data" / "voc14"


@pytest.fixture(scope="session")
def tiny_model():
    import emerdiff_lab as edl

    return edl.load_model("tiny", device="cpu")


@pytest.fixture(scope="session")
def small_cfg(tiny_model):
    """The tiny model's defaults at 4 masks: fast, still exercises every code path."""
    return tiny_model.default_config.replace(num_masks=4)


@pytest.fixture
def image128():
    """A (3, 128, 128) test image with structure (gradients and a square), seeded."""
    generator = torch.Generator().manual_seed(0)
    ys, xs = torch.meshgrid(torch.linspace(0, 1, 128), torch.linspace(0, 1, 128), indexing="ij")
    image = torch.stack([ys, xs, 1 - ys]) * 0.6
    image[:, 40:90, 30:80] = torch.tensor([0.9, 0.2, 0.1]).view(3, 1, 1)
    return (image + 0.05 * torch.rand(image.shape, generator=generator)).clamp(0, 1)


@pytest.fixture(scope="session")
def sd14_configs():
    if not SD14_CONFIGS.is_dir():
        pytest.skip(f"../shared/data/sd-v1-4-configs not found at {SD14_CONFIGS}")
    return SD14_CONFIGS


@pytest.fixture(scope="session")
def voc14():
    if not (VOC14 / "images").is_dir():
        pytest.skip(f"../shared/data/voc14 not found at {VOC14}")
    return VOC14
