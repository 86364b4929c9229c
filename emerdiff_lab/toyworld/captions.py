"""Captions of the colour-independent ToyWorld scenes, written from their content (ToyWorld v2).

A scene's content is what the generator itself put there and left visible: the regions (sky,
mountains, water, sand, grass) with at least ``MIN_VISIBLE_PIXELS`` pixels, and the objects
(trees, rocks, houses, fences) of the generator's own list
(:func:`~emerdiff_lab.toyworld.scenes256.generate_scene_objects`) with at least that many
visible pixels, counted per class. Counts never come from connected components of the labels
(occlusion splits objects, touching neighbours merge).

The words come from a fixed vocabulary (:data:`VOCABULARY`), in one of a few phrasings:

    >>> caption(content_of(seed=0))            # phrasing 0
    'two trees, a house and a fence on grass by the water under the sky'  (for example)
"""

from __future__ import annotations

import numpy as np

from .scenes import CLASS_NAMES, FENCE, GRASS, HOUSE, MOUNTAIN, ROCK, SAND, SKY, TREE, WATER
from .scenes256 import generate_scene_objects

__all__ = ["MIN_VISIBLE_PIXELS", "NUM_PHRASINGS", "OBJECT_CLASSES", "OPEN_VOCABULARY_PROMPT",
           "VOCABULARY", "caption", "content_of", "scene_content"]

MIN_VISIBLE_PIXELS = 24   # at 128 px; scaled by area at other sizes
OBJECT_CLASSES = (TREE, ROCK, HOUSE, FENCE)
NUM_PHRASINGS = 3
# The open-vocabulary protocol's prompt: every class name, the same for every image.
OPEN_VOCABULARY_PROMPT = ", ".join(CLASS_NAMES)

_PLURAL = {TREE: "trees", ROCK: "rocks", HOUSE: "houses", FENCE: "fences"}
_COUNT_WORDS = ("a", "two", "three", "four", "five", "six")
_LINKS = ("on", "by", "the", "under", "below", "with", "and", "of", "landscape", "many",
          "mountains")
# Every word a caption can hold (the v2 tokenizer gives each one token); punctuation: , and :
VOCABULARY = tuple(dict.fromkeys([*CLASS_NAMES, *_PLURAL.values(), *_COUNT_WORDS, *_LINKS]))


def scene_content(labels: np.ndarray, objects, min_pixels: float | None = None) -> np.ndarray:
    """(NUM_CLASSES,) int64 counts of what a scene shows.

    Args:
        labels: (S, S) int class map of the scene.
        objects: the generator's ``(class id, visible pixels)`` list (``generate_scene_objects``).
        min_pixels: least visible pixels of a counted object or region; default
            ``MIN_VISIBLE_PIXELS`` scaled from 128 px to ``S`` by area.

    Returns:
        per class: 1 or 0 for the regions (present or not), the number of visible objects for
        trees, rocks, houses and fences.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.shape[0] != labels.shape[1]:
        raise ValueError(f"labels must be a square (S, S) class map, got {labels.shape}")
    if min_pixels is None:
        min_pixels = MIN_VISIBLE_PIXELS * (labels.shape[0] / 128) ** 2
    counts = (np.bincount(labels.ravel(), minlength=len(CLASS_NAMES)) >= min_pixels).astype(
        np.int64)
    for cls in OBJECT_CLASSES:
        counts[cls] = sum(1 for c, n in objects if c == cls and n >= min_pixels)
    return counts


def content_of(seed: int, size: int = 128) -> np.ndarray:
    """:func:`scene_content` of the scene ``generate_scene_objects(seed, size)``."""
    _, labels, objects = generate_scene_objects(seed, size)
    return scene_content(labels, objects)


def _join(parts: list[str]) -> str:
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def _objects(counts) -> list[str]:
    words = []
    for cls in OBJECT_CLASSES:
        n = int(counts[cls])
        if n == 1:
            words.append(f"a {CLASS_NAMES[cls]}")
        elif n > 1:
            words.append(f"{_COUNT_WORDS[n - 1] if n <= 6 else 'many'} {_PLURAL[cls]}")
    return words


def caption(counts, phrasing: int = 0) -> str:
    """The caption of a scene's content (:func:`scene_content`), in phrasing 0, 1 or 2.

    0: "two trees and a house on grass by the water below mountains under the sky"
    1: "a landscape of sky, mountains, grass and water with two trees and a house"
    2: "sky, mountains, grass, water, two trees, a house"
    """
    counts = np.asarray(counts)
    if counts.shape != (len(CLASS_NAMES),):
        raise ValueError(f"counts must hold one count per class ({len(CLASS_NAMES)}), "
                         f"got shape {counts.shape}")
    if phrasing not in range(NUM_PHRASINGS):
        raise ValueError(f"phrasing must be 0, 1 or 2, got {phrasing!r}")
    things = _objects(counts)
    land = [CLASS_NAMES[c] for c in (GRASS, SAND) if counts[c]]
    regions = ([CLASS_NAMES[SKY]] if counts[SKY] else []) + (
        ["mountains"] if counts[MOUNTAIN] else []) + land + (
        [CLASS_NAMES[WATER]] if counts[WATER] else [])
    if phrasing == 2:
        return ", ".join(regions + things)
    if phrasing == 1:
        text = "a landscape of " + _join(regions)
        return text + (" with " + _join(things) if things else "")
    clauses = [_join(things)] if things else []
    if land:
        clauses.append(("on " if things else "") + _join(land))
    if counts[WATER]:
        clauses.append("by the water" if clauses else "the water")
    if counts[MOUNTAIN]:
        clauses.append("below mountains" if clauses else "mountains")
    if counts[SKY]:
        clauses.append("under the sky" if clauses else "the sky")
    return " ".join(clauses)
