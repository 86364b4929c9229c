"""Seeded 256 px landscape scenes whose classes colour does not give away (for the latent model).

Same nine classes and layout logic as :mod:`emerdiff_lab.toyworld.scenes` (sky, optional
mountains, 1-3 ground bands, 2-6 occluding objects), but the colours are decoupled from the
classes: every scene draws a small palette from one shared distribution, and every class present
paints its pattern with two colours drawn from that palette. So two classes of one scene often
share colours, the same class has other colours in the next scene, and what identifies a class is
its **pattern and shape**: stripe orientation and period, dots, checks, bricks, blobs.

Pattern elements are 6-18 px wide and thin parts (trunks, fence posts and rails) at least 4 px
wide at 256 px, so that a factor-8 VAE can represent them; patterns are smooth (sinusoid-based)
rather than pixel noise, which no small VAE can reconstruct. Image and labels are
rendered together at the output resolution, so the labels are exact.
"""

from __future__ import annotations

import numpy as np

from .scenes import (
    CLASS_NAMES,
    FENCE,
    GRASS,
    HELDOUT_SEED_START,
    HOUSE,
    MOUNTAIN,
    NUM_CLASSES,
    ROCK,
    SAND,
    SKY,
    TREE,
    WATER,
    _blob,
    _profile,
    _rng,
    _smooth_noise,
)

__all__ = ["CLASS_NAMES", "HELDOUT_SEED_START", "NUM_CLASSES", "PALETTE_SIZE", "SIZES",
           "generate_batch", "generate_scene", "generate_scene_objects"]

SIZES = (64, 128, 256)
PALETTE_SIZE = 5      # colours per scene, shared by all its classes
PIXEL_NOISE = 0.01    # std of the sensor noise added to the render (in [0, 1] units)


def _palette(rng) -> np.ndarray:
    """(PALETTE_SIZE, 3) colours in [0.05, 0.95], the same distribution for every class."""
    return rng.uniform(0.05, 0.95, (PALETTE_SIZE, 3))


def _wave(phase: np.ndarray, sharpness: float = 1.6) -> np.ndarray:
    """A soft square wave in [0, 1] of ``phase`` (radians): flat tops, transitions of about a
    fifth of the period (sharp enough to read as a pattern, smooth enough for a VAE)."""
    return np.clip(0.5 + sharpness * np.sin(phase), 0.0, 1.0)


def _pattern(rng, cls: int, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(size, size) mixing weight in [0, 1] between a class's two colours, over the whole canvas.

    Periods are given in pixels at 256 px and scale with the canvas (``s``). The finest pattern
    (grass blades) has a 16 px period, two latent cells of the factor-8 VAE: a first version with
    8-12 px periods (one latent cell) left a small VAE, after 400 steps, at the MSE of local mean
    colours (0.045), textures lost, and the textures are what tells classes apart here. Random
    phases and small random period/angle changes keep scenes from being pixel-identical while
    keeping each class recognisable.
    """
    s = size / 256.0
    phase = rng.uniform(0, 2 * np.pi)
    if cls == SKY:  # smooth vertical gradient with soft clouds: no periodic pattern at all
        clouds = np.clip(_smooth_noise(rng, size, 4) * 1.8 - 1.0, 0, 1)
        return np.clip(yy / size * 0.8 + clouds, 0, 1)
    if cls == MOUNTAIN:  # wide diagonal strata, period 36 px, angle 30-60 degrees
        angle = rng.uniform(np.pi / 6, np.pi / 3) * rng.choice([-1, 1])
        u = yy * np.cos(angle) + xx * np.sin(angle)
        return _wave(2 * np.pi * u / (rng.uniform(32, 40) * s) + phase)
    if cls == WATER:  # horizontal ripples, period 20 px, gently waving
        bend = 4 * s * np.sin(2 * np.pi * xx / (rng.uniform(60, 90) * s) + phase)
        return _wave(2 * np.pi * (yy + bend) / (rng.uniform(18, 22) * s))
    if cls == SAND:  # dots of radius 7 px on a staggered 24 px grid
        period = rng.uniform(22, 26) * s
        row = np.floor(yy / period)
        fx = ((xx + (row % 2) * period / 2) % period) - period / 2
        fy = (yy % period) - period / 2
        return np.clip((8 * s - np.hypot(fx, fy)) / (2 * s), 0, 1)
    if cls == GRASS:  # vertical blades, period 16 px (8 px blade, 8 px gap), slightly leaning
        lean = rng.uniform(-0.15, 0.15)
        return _wave(2 * np.pi * (xx + lean * yy) / (rng.uniform(15, 17) * s) + phase)
    if cls == TREE:  # round canopy blobs about 24 px across
        blobs = _smooth_noise(rng, size, 11)
        return np.clip((blobs - 0.5) * 4 + 0.5, 0, 1)
    if cls == ROCK:  # checks of 16 px squares, rotated 45 degrees
        period = rng.uniform(30, 34) * s
        u, v = (xx + yy) / np.sqrt(2), (xx - yy) / np.sqrt(2)
        a, b = _wave(2 * np.pi * u / period + phase), _wave(2 * np.pi * v / period)
        return a * b + (1 - a) * (1 - b)
    if cls == HOUSE:  # bricks 26 x 10 px with 6 px mortar (period 32 x 16 px)
        bw, bh, m = 32 * s, 16 * s, 6 * s
        row = np.floor(yy / bh)
        mortar = ((yy % bh) < m) | (((xx + (row % 2) * bw / 2) % bw) < m)
        return mortar.astype(np.float64)
    if cls == FENCE:  # planks: one colour with faint wide grain
        return 0.15 + 0.15 * _wave(2 * np.pi * yy / (24 * s) + phase)
    raise ValueError(f"unknown class {cls}")


def _object_mask(rng, cls, size, yy, xx, base_y, cx, scale) -> np.ndarray:
    """(size, size) bool footprint of one object standing on row ``base_y`` at column ``cx``;
    thin parts (trunks, posts, rails) at least 4 px wide at 256 px."""
    thin = 4.0 * size / 256
    if cls == TREE:
        trunk_w = max(1.5 * thin, scale * rng.uniform(0.08, 0.14))
        trunk_h = scale * rng.uniform(0.35, 0.6)
        mask = (np.abs(xx - cx) <= trunk_w / 2) & (yy <= base_y) & (yy >= base_y - trunk_h)
        radius = scale * rng.uniform(0.3, 0.5)
        mask |= _blob(rng, size, yy, xx, base_y - trunk_h - radius * 0.7, cx, radius, 0.5)
        return mask
    if cls == ROCK:
        radius = scale * rng.uniform(0.3, 0.6)
        return _blob(rng, size, yy, xx, base_y - radius * 0.5, cx, radius, 0.3) & \
            (yy <= base_y + radius * 0.2)
    if cls == HOUSE:
        w, h = scale * rng.uniform(0.6, 1.1), scale * rng.uniform(0.4, 0.7)
        body = (np.abs(xx - cx) <= w / 2) & (yy <= base_y) & (yy >= base_y - h)
        roof_h = scale * rng.uniform(0.2, 0.4)
        top = base_y - h
        roof = (yy < top) & (yy >= top - roof_h) & \
            (np.abs(xx - cx) <= (w / 2 + thin) * (yy - (top - roof_h)) / roof_h)
        return body | roof
    if cls == FENCE:
        length, height = scale * rng.uniform(1.0, 2.0), max(4 * thin, scale * rng.uniform(0.3, 0.5))
        gap = max(3 * thin, scale * rng.uniform(0.15, 0.3))
        post_w = max(thin, gap * 0.3)
        inside = (np.abs(xx - cx) <= length / 2) & (yy <= base_y) & (yy >= base_y - height)
        posts = ((xx - cx) % gap) < post_w
        rail = np.abs(yy - (base_y - height * 0.7)) < max(thin, height * 0.08)
        return inside & (posts | rail)
    raise ValueError(f"unknown object class {cls}")


def _layout(rng, size: int, yy: np.ndarray, xx: np.ndarray) -> tuple[np.ndarray, np.ndarray,
                                                                      list[int]]:
    """``(labels, instances, object_classes)``: the (size, size) int64 class map (sky, optional
    mountains, ground bands, occluding objects), the (size, size) int64 map of which object
    painted each pixel last (-1: no object) and each object's class, in painting order. The
    instance map consumes no random numbers, so scenes are the same with or without it."""
    labels = np.full((size, size), SKY, dtype=np.int64)
    horizon = rng.uniform(0.2, 0.6) * size
    if rng.random() < 0.6:
        ridge = _profile(rng, size, horizon - rng.uniform(0.05, 0.25) * size,
                         rng.uniform(0.04, 0.15) * size, rng.integers(3, 8))
        labels[yy >= ridge[None, :]] = MOUNTAIN
    ground = list(rng.permutation([WATER, SAND, GRASS])[:rng.integers(1, 4)])
    edges = np.sort(rng.uniform(horizon, size, len(ground) - 1))
    level = horizon
    for cls, next_level in zip(ground, [*edges, None]):
        line = _profile(rng, size, level, rng.uniform(0.0, 0.06) * size, rng.integers(2, 7))
        labels[yy >= line[None, :]] = cls
        if next_level is not None:
            level = next_level
    objects = []
    for _ in range(rng.integers(2, 7)):
        cls = rng.choice([TREE, ROCK, HOUSE, FENCE], p=[0.35, 0.25, 0.2, 0.2])
        base_y = rng.uniform(horizon, size * 1.05)
        scale = rng.uniform(0.12, 0.6) * size * (0.7 + 0.9 * (base_y - horizon) / size)
        objects.append((base_y, cls, rng.uniform(-0.1, 1.1) * size, scale))
    instances = np.full((size, size), -1, dtype=np.int64)
    painted = sorted(objects, key=lambda o: o[0])
    for index, (base_y, cls, cx, scale) in enumerate(painted):
        mask = _object_mask(rng, cls, size, yy, xx, base_y, cx, scale)
        labels[mask] = cls
        instances[mask] = index
    return labels, instances, [int(o[1]) for o in painted]


def generate_scene(seed_or_rng, size: int = 256, *, clean: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """One random scene: ``(image, labels)`` of :func:`generate_scene_objects` (same arguments,
    the same scene bit for bit)."""
    image, labels, _ = generate_scene_objects(seed_or_rng, size, clean=clean)
    return image, labels


def generate_scene_objects(seed_or_rng, size: int = 256, *, clean: bool = False
                           ) -> tuple[np.ndarray, np.ndarray, list[tuple[int, int]]]:
    """One random scene and the generator's own list of its objects.

    Args:
        seed_or_rng: a non-negative int seed or a ``numpy.random.Generator``; the same seed gives
            the same scene, bit for bit.
        size: side in pixels, one of 64, 128, 256 (patterns scale with it).
        clean: return the noise-free render (the reference of the VAE's PSNR) instead of the
            render plus Gaussian sensor noise of std ``PIXEL_NOISE``. Layout and colours are the
            same either way.

    Returns:
        ``(image, labels, objects)``: (size, size, 3) uint8 RGB, (size, size) int64 class ids in
        [0, NUM_CLASSES) (see ``CLASS_NAMES``; every pixel has a class) and the generator's own
        list of objects (trees, rocks, houses, fences) in painting order, each ``(class id,
        visible pixels)``: pixels it still covers after the objects in front were painted (0
        when fully hidden). Counting connected components of ``labels`` instead would be wrong
        where occlusion splits an object or neighbours of one class touch.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES} pixels, got {size!r}")
    rng = _rng(seed_or_rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    labels, instances, object_classes = _layout(rng, size, yy, xx)
    visible = np.bincount(instances[instances >= 0], minlength=len(object_classes))
    objects = [(cls, int(n)) for cls, n in zip(object_classes, visible)]
    palette = _palette(rng)
    image = np.zeros((size, size, 3))
    for cls in range(NUM_CLASSES):  # fixed order, so the random stream never depends on layout
        a, b = palette[rng.choice(PALETTE_SIZE, 2, replace=False)]
        weight = _pattern(rng, cls, size, yy, xx)[..., None]
        where = labels == cls
        image[where] = (a * (1 - weight) + b * weight)[where]
    noise = rng.normal(0, PIXEL_NOISE, image.shape)
    if not clean:
        image = image + noise
    return (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8), labels, objects


def generate_batch(seeds, size: int = 256, *, clean: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Scenes for a sequence of int seeds: (N, size, size, 3) uint8 and (N, size, size) int64."""
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    pairs = [generate_scene(seed, size, clean=clean) for seed in seeds]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
