"""The real-weights tests' quality check: EmerDiff against the bilinear upsampling of its own
low-resolution masks on a few VOC photos (shared by tests/test_real_weights_*.py)."""

import numpy as np
import torch

import emerdiff_lab as edl


def emerdiff_and_bilinear_miou(model, voc14, cfg, size: int, count: int = 4) -> dict:
    """{"emerdiff": [mIoU...], "bilinear": [mIoU...]} over the first ``count`` VOC photos."""
    from PIL import Image

    from emerdiff_lab.evaluation.metrics import hungarian_miou

    scores = {"emerdiff": [], "bilinear": []}
    for image_path in sorted((voc14 / "images").glob("*.jpg"))[:count]:
        gt = torch.from_numpy(np.array(Image.open(voc14 / "labels" / f"{image_path.stem}.png")))
        seg = edl.segment(model, image_path, cfg, image_size=size, progress=False)
        naive = edl.images.labels_to_original(
            edl.upsample_bilinear(seg.lowres_labels, size), edl.prepare_image(image_path, size))
        scores["emerdiff"].append(hungarian_miou(seg.labels, gt).miou)
        scores["bilinear"].append(hungarian_miou(naive, gt).miou)
    return scores
