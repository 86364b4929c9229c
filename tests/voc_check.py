"""The real-weights tests' shared checks (tests/test_real_weights_*.py): EmerDiff against the
bilinear upsampling of its own low-resolution masks on a few VOC photos, and the activation
scale a joint-attention offset is added to."""

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


def joint_offset_scale(model, size: int) -> tuple[str, float, float]:
    """``(modulation layer, rms of its attention output, mean |gate_msa| of its block)`` at
    t_m on a sample photo: what an MM-DiT's offset is added to and the AdaLN gate that scales
    it (lambda = 10 was chosen for SD 1.x's cross-attention, not for this)."""
    from emerdiff_lab.inversion import modulation_timestep

    cfg = model.default_config
    image = edl.load_image(edl.sample_images()["chelsea"], size=size)
    inv = edl.invert(model, image, cfg, progress=False)
    _, layer = edl.features.layer_names(model, cfg, size)
    block = model.unet.get_submodule(layer.rsplit(".", 1)[0])
    seen = {}
    hooks = [model.unet.get_submodule(layer).register_forward_hook(
                 lambda m, a, out: seen.update(attention=out[0])),
             block.norm1.register_forward_hook(lambda m, a, out: seen.update(gate=out[1]))]
    start = inv.index_of(modulation_timestep(model, inv, cfg))
    try:
        edl.inversion.unet_predict(model, inv.latents[start:start + 1],
                                   inv.timesteps[start:start + 1], inv.condition)
    finally:
        for hook in hooks:
            hook.remove()
    return (layer, float(seen["attention"].float().pow(2).mean().sqrt()),
            float(seen["gate"].float().abs().mean()))
