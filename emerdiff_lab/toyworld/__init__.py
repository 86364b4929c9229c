"""ToyWorld: generated landscape scenes with exact labels, and a small diffusion model trained
on them.

    from emerdiff_lab.toyworld import generate_scene, load_toyworld, sample
    image, labels = generate_scene(0)            # (64, 64, 3) uint8, (64, 64) int64
    model = load_toyworld()                      # = emerdiff_lab.load_model("toyworld")
    images = sample(model, 4)                    # (4, 3, 64, 64) float in [0, 1]
"""

from .model import IMAGE_SIZE, default_config, load_toyworld
from .sampling import sample
from .scenes import CLASS_NAMES, HELDOUT_SEED_START, NUM_CLASSES, generate_batch, generate_scene

__all__ = ["CLASS_NAMES", "HELDOUT_SEED_START", "IMAGE_SIZE", "NUM_CLASSES", "default_config",
           "generate_batch", "generate_scene", "load_toyworld", "sample"]
