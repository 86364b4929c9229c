"""Held-out evaluation of ToyWorld v2 (issue 22's aims): EmerDiff, its baselines, and the
open-vocabulary protocol with word heat maps as the text-aligned embedding.

Per scene (128 px, exact labels):

- Hungarian mIoU (per image, classes present) of ``masks`` (k-means of the 16x16 features,
  nearest), ``naive`` (the same masks upsampled bilinearly), ``emerdiff`` (raw maps); of
  ``pixel_kmeans`` and ``cell_colour_kmeans`` (no UNet); under the same matching, each one's
  boundary F-score under ``name_bf1`` and ``name_bf2`` (theta 1 and 2 px at 128 px) and
  ``name_bf2_agnostic`` (all label changes, 2 px);
- open vocabulary (mIoU over the scene's classes, class ids compared directly, no matching):
  the prompt is the fixed list of all nine class names (:data:`~.captions.OPEN_VOCABULARY_PROMPT`,
  the same for every image, so it leaks nothing about which classes are present); each mask takes
  the class whose word map has the largest mean inside it (``ov_emerdiff``: EmerDiff's masks;
  ``ov_naive``: naive upsampling's); ``ov_wordmaps``: each pixel the class of its largest word
  map (the word maps alone). ``oracle_*``: the same with the scene's own caption as the prompt
  and only the classes it names as candidates ("oracle presence": the caption tells which classes
  are there).
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import EmerDiffConfig
from ..evaluation.metrics import confusion_matrix, mean_iou
from ..evaluation.openvocab import classify_masks
from ..wordmaps import DEFAULT_TIMESTEPS, WordMaps, word_heat_maps
from .captions import OPEN_VOCABULARY_PROMPT, caption, scene_content
from .evaluation import method_scores, scene_predictions
from .evaluation_latent import baseline_scores
from .scenes import CLASS_NAMES, NUM_CLASSES
from .scenes256 import generate_scene_objects

__all__ = ["HUNGARIAN_METHODS", "OPEN_VOCABULARY_METHODS", "class_miou", "evaluate_scene",
           "open_vocabulary_labels", "open_vocabulary_scores", "scene"]

HUNGARIAN_METHODS = ("masks", "naive", "emerdiff", "pixel_kmeans", "cell_colour_kmeans")
OPEN_VOCABULARY_METHODS = ("ov_emerdiff", "ov_naive", "ov_wordmaps",
                           "oracle_emerdiff", "oracle_naive")


def scene(seed: int, size: int = 128) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(pixels (3, S, S) float32 in [0, 1], labels (S, S) int64, caption)`` of one seed (the
    caption in phrasing 0, from the generator's own object list)."""
    image, labels, objects = generate_scene_objects(seed, size)
    return (torch.from_numpy(image).permute(2, 0, 1).float() / 255, torch.from_numpy(labels),
            caption(scene_content(labels, objects)))


def class_miou(pred, labels) -> float:
    """mIoU over the classes present in ``labels`` (S, S), class ids compared directly."""
    return mean_iou(confusion_matrix(np.asarray(pred), np.asarray(labels), NUM_CLASSES))


def open_vocabulary_labels(maps: WordMaps, masks: torch.Tensor,
                           classes=tuple(range(NUM_CLASSES))) -> torch.Tensor:
    """(S, S) int64 class ids: each mask of ``masks`` (S, S) takes the class (``classes[i]`` for
    the word ``maps.words[i]``) whose word map has the largest mean inside it."""
    ids = torch.unique(masks.long(), return_inverse=True)[1]   # contiguous mask ids
    word = classify_masks(maps.maps, ids, torch.eye(len(maps.words)))
    return torch.as_tensor(classes)[word]


def _oracle_words(text: str) -> tuple[list[str], list[int]]:
    """The class names a caption names (singular or plural) and their class ids."""
    tokens = set(text.replace(",", " ").split())
    words, classes = [], []
    for cls, name in enumerate(CLASS_NAMES):
        for form in (name, name + "s"):
            if form in tokens:
                words.append(form)
                classes.append(cls)
                break
    return words, classes


def open_vocabulary_scores(model, pixels: torch.Tensor, labels: torch.Tensor,
                           predictions: dict, *, timesteps=DEFAULT_TIMESTEPS, seed: int = 0,
                           text: str | None = None) -> dict[str, float]:
    """Open-vocabulary mIoU of one scene: ``ov_emerdiff``, ``ov_naive`` (the masks of
    ``predictions["emerdiff"]`` and ``["naive"]`` classified by the word maps of the nine-class
    prompt), ``ov_wordmaps`` (per-pixel argmax of those maps); with ``text`` (the scene's
    caption) also ``oracle_emerdiff`` and ``oracle_naive``."""
    maps = word_heat_maps(model, pixels, OPEN_VOCABULARY_PROMPT, CLASS_NAMES,
                          timesteps=timesteps, seed=seed)
    scores = {f"ov_{m}": class_miou(open_vocabulary_labels(maps, predictions[m]), labels)
              for m in ("emerdiff", "naive")}
    scores["ov_wordmaps"] = class_miou(maps.maps.argmax(0), labels)
    if text is not None:
        words, classes = _oracle_words(text)
        own = word_heat_maps(model, pixels, text, words, timesteps=timesteps, seed=seed)
        scores |= {f"oracle_{m}": class_miou(open_vocabulary_labels(own, predictions[m],
                                                                    classes), labels)
                   for m in ("emerdiff", "naive")}
    return scores


def evaluate_scene(model, pixels: torch.Tensor, labels: torch.Tensor, text: str,
                   cfg: EmerDiffConfig, *, timesteps=DEFAULT_TIMESTEPS,
                   oracle: bool = True, baselines: bool = True) -> dict[str, float]:
    """Every method's score for one scene (see the module docstring).

    Args:
        model: ToyWorld v2 or its random control (any model whose tokenizer has the class names).
        pixels: (3, S, S) float32 in [0, 1]; labels: (S, S) int64; text: the scene's caption
            (used only by the ``oracle_*`` methods).
        cfg: EmerDiff settings (K, t_m, lambda, blur, seed).
        timesteps: the word maps' timesteps.
        oracle: also score the "oracle presence" variants.
        baselines: also score the colour and latent k-means baselines (no UNet: the same for
            a model and its random control).
    """
    predictions = scene_predictions(model, pixels, cfg)
    scores = {}
    for m in ("masks", "naive", "emerdiff"):
        scores |= method_scores(m, predictions[m], labels)
    if baselines:
        scores |= baseline_scores(model, pixels, labels, cfg)
    return scores | open_vocabulary_scores(model, pixels, labels, predictions,
                                           timesteps=timesteps, seed=cfg.seed,
                                           text=text if oracle else None)


CAPTION_USE_BANDS = ((0, 250), (250, 500), (500, 750), (750, 1000))


@torch.no_grad()
def caption_use_errors(model, seeds, *, repeats: int = 2, seed: int = 0) -> dict:
    """Does the UNet use its caption? Per band of t, the epsilon MSE on the scenes of ``seeds``
    with each scene's own caption, the empty prompt and another scene's caption (the next
    seed's), with the same noise and timesteps for all three prompts.

    Returns:
        ``{prompt kind: {"lo-hi": [per-sample MSE, len(seeds) * repeats of them]}}`` for the
        kinds ``own caption``, ``empty prompt`` and ``another scene's caption``.
    """
    from diffusers import DDIMScheduler

    from .latent_model import SCHEDULER_CONFIG

    pixels, texts = zip(*((p, t) for p, _, t in map(scene, seeds)))
    x0 = model.encode(torch.stack(pixels).to(model.device, model.dtype))
    alphas = DDIMScheduler.from_config(SCHEDULER_CONFIG).alphas_cumprod.float()
    kinds = {"own caption": list(texts), "empty prompt": [""] * len(texts),
             "another scene's caption": list(texts[1:] + texts[:1])}
    contexts = {kind: model.text_encoder(model.tokenizer(
        prompts, padding="max_length", truncation=True, max_length=model.tokenizer.model_max_length,
        return_tensors="pt").input_ids.to(model.device))[0] for kind, prompts in kinds.items()}
    generator = torch.Generator().manual_seed(seed)
    errors = {kind: {} for kind in kinds}
    for lo, hi in CAPTION_USE_BANDS:
        for _ in range(repeats):
            t = torch.randint(lo, hi, (len(x0),), generator=generator)
            eps = torch.randn(x0.shape, generator=generator).to(x0)
            ab = alphas[t].view(-1, 1, 1, 1).to(x0)
            x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
            for kind, context in contexts.items():
                pred = model.unet(x_t, t.to(model.device), encoder_hidden_states=context).sample
                errors[kind].setdefault(f"{lo}-{hi}", []).extend(
                    ((pred - eps) ** 2).float().mean((1, 2, 3)).tolist())
    return errors
