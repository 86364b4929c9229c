"""Writes the ToyWorld scenes that `make demo` segments: emerdiff_lab/assets/toyworld/.

    python scripts/make_demo_scenes.py

Held-out seeds (after HELDOUT_SEED_START + 10000, beyond the evaluation's held-out set), 64 px,
with their exact label maps as palette PNGs beside them.
"""

from pathlib import Path

from PIL import Image

from emerdiff_lab.io import atomic_file, save_label_png
from emerdiff_lab.toyworld import HELDOUT_SEED_START, generate_scene

OUT = Path(__file__).resolve().parents[1] / "emerdiff_lab" / "assets" / "toyworld"


def main() -> None:
    (OUT / "labels").mkdir(parents=True, exist_ok=True)
    for index in range(4):
        image, labels = generate_scene(HELDOUT_SEED_START + 10_000 + index, size=64)
        with atomic_file(OUT / f"scene_{index}.png") as handle:
            Image.fromarray(image).save(handle, format="PNG")
        save_label_png(labels, OUT / "labels" / f"scene_{index}.png")
    print(f"wrote 4 scenes to {OUT}")


if __name__ == "__main__":
    main()
