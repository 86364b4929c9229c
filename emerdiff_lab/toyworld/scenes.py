"""Seeded generator of small RGB landscape scenes with exact per-pixel semantic labels.

Every class has its own texture (not only its own colour), so that a model has to learn what a
region *is* rather than where it sits; boundaries are irregular and objects come in many sizes,
with thin parts (trunks, fence posts) and occlusion, so that they cut across low-resolution cells.
Image and labels are rendered together at the output resolution, so the labels are exact.
"""

from __future__ import annotations

import numpy as np

CLASS_NAMES = ("sky", "mountain", "water", "sand", "grass", "tree", "rock", "house", "fence")
NUM_CLASSES = len(CLASS_NAMES)
SKY, MOUNTAIN, WATER, SAND, GRASS, TREE, ROCK, HOUSE, FENCE = range(NUM_CLASSES)
SIZES = (32, 64, 128)
# Training draws scenes from seeds below this; held-out evaluation scenes use seeds from it up.
HELDOUT_SEED_START = 1_000_000_000


def _rng(seed_or_rng) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    if isinstance(seed_or_rng, (bool, np.bool_)) or not isinstance(seed_or_rng, (int, np.integer)) \
            or seed_or_rng < 0:
        raise ValueError(f"seed_or_rng must be a non-negative int or a numpy Generator, "
                         f"got {seed_or_rng!r}")
    return np.random.default_rng(int(seed_or_rng))


def _smooth_noise(rng, size: int, cells: int) -> np.ndarray:
    """(size, size) value noise in [0, 1]: a random (cells+1)^2 grid, bilinearly interpolated."""
    grid = rng.random((cells + 1, cells + 1))
    coords = np.linspace(0, cells, size, endpoint=False)
    i = coords.astype(int)
    f = coords - i
    top = grid[i][:, i] * (1 - f)[None, :] + grid[i][:, i + 1] * f[None, :]
    bottom = grid[i + 1][:, i] * (1 - f)[None, :] + grid[i + 1][:, i + 1] * f[None, :]
    return top * (1 - f)[:, None] + bottom * f[:, None]


def _profile(rng, size: int, base: float, amplitude: float, cells: int) -> np.ndarray:
    """(size,) a random wavy 1-D boundary (in rows), for horizons and shorelines."""
    knots = rng.uniform(-1, 1, cells + 1)
    line = np.interp(np.linspace(0, cells, size), np.arange(cells + 1), knots)
    return base + amplitude * line


def _jitter(rng, colour, amount: float = 0.06) -> np.ndarray:
    return np.clip(np.asarray(colour, dtype=np.float64) + rng.uniform(-amount, amount, 3), 0, 1)


def _texture(rng, cls: int, size: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """(size, size, 3) float RGB of class ``cls`` over the whole canvas; masks cut it later.

    Each class pairs a palette with a pattern of its own scale and orientation (why: a model
    that can only tell classes apart by colour learns little that EmerDiff can use).
    """
    s = size / 64.0  # pattern periods are defined at 64 px and scale with the canvas
    fine = rng.random((size, size))
    if cls == SKY:
        top, bottom = _jitter(rng, (0.25, 0.45, 0.85)), _jitter(rng, (0.70, 0.82, 0.95))
        t = (yy / size)[..., None]
        clouds = np.clip(_smooth_noise(rng, size, 4) * 1.6 - 0.9, 0, 1)[..., None]
        return (top * (1 - t) + bottom * t) * (1 - clouds) + 0.97 * clouds
    if cls == MOUNTAIN:
        base = _jitter(rng, (0.45, 0.42, 0.50))
        strata = 0.5 + 0.5 * np.sin((yy * 0.8 + xx * 0.45) / (1.3 * s) + rng.uniform(0, 6))
        return base[None, None] * (0.75 + 0.35 * strata[..., None]) + 0.05 * fine[..., None]
    if cls == WATER:
        base = _jitter(rng, (0.12, 0.35, 0.62))
        ripple = np.sin(yy / (0.9 * s) + 2.0 * np.sin(xx / (5 * s) + rng.uniform(0, 6)))
        glint = (ripple > 0.85)[..., None]
        return base[None, None] * (0.85 + 0.15 * ripple[..., None]) * ~glint + 0.85 * glint
    if cls == SAND:
        base = _jitter(rng, (0.86, 0.76, 0.52))
        return base[None, None] * (0.80 + 0.30 * fine[..., None])
    if cls == GRASS:
        base = _jitter(rng, (0.30, 0.62, 0.22))
        # Vertical blades: noise stretched along the rows.
        blades = np.repeat(rng.random((-(-size // 3), size)), 3, axis=0)[:size]
        return base[None, None] * (0.65 + 0.55 * blades[..., None])
    if cls == TREE:
        base = _jitter(rng, (0.10, 0.36, 0.14))
        blobs = _smooth_noise(rng, size, max(2, size // 5))
        return base[None, None] * (0.55 + 0.7 * blobs[..., None]) + 0.04 * fine[..., None]
    if cls == ROCK:
        base = _jitter(rng, (0.55, 0.53, 0.50))
        spots = (_smooth_noise(rng, size, max(2, size // 6)) > 0.62)[..., None]
        return base[None, None] * (0.9 + 0.1 * fine[..., None]) * np.where(spots, 0.6, 1.0)
    if cls == HOUSE:
        base = _jitter(rng, (0.72, 0.30, 0.22))
        period = max(2, round(3 * s))
        mortar = ((yy % period) == 0) | (((xx + (yy // period) % 2 * period) % (2 * period)) == 0)
        return np.where(mortar[..., None], 0.88, base[None, None] * (0.9 + 0.1 * fine[..., None]))
    if cls == FENCE:
        base = _jitter(rng, (0.95, 0.93, 0.85))
        return base[None, None] * (0.85 + 0.15 * (xx % 2)[..., None])
    raise ValueError(f"unknown class {cls}")


def _blob(rng, size, yy, xx, cy, cx, radius, roughness=0.35) -> np.ndarray:
    """(size, size) bool, an irregular star-shaped blob: radius modulated by random harmonics."""
    angle = np.arctan2(yy - cy, xx - cx)
    r = np.ones_like(angle)
    for k in range(2, 6):
        r += roughness / k * np.sin(k * angle + rng.uniform(0, 2 * np.pi))
    return np.hypot(yy - cy, xx - cx) <= radius * r


def generate_scene(seed_or_rng, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """One random scene.

    Args:
        seed_or_rng: a non-negative int seed or a ``numpy.random.Generator``. The same seed gives
            the same scene, bit for bit.
        size: side in pixels, one of 32, 64, 128.

    Returns:
        ``(image, labels)``: (size, size, 3) uint8 RGB and (size, size) int64 class ids in
        [0, NUM_CLASSES) (see ``CLASS_NAMES``). Every pixel has a class; there is no ignore label.
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES} pixels, got {size!r}")
    rng = _rng(seed_or_rng)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    labels = np.full((size, size), SKY, dtype=np.int64)

    # Background bands, top to bottom: sky, optional mountains, then a random order of ground
    # classes. The horizon height is random so that no class owns a fixed band of rows.
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

    # Objects, painted back to front (larger y = nearer = painted later, so it occludes).
    objects = []
    for _ in range(rng.integers(2, 7)):
        cls = rng.choice([TREE, ROCK, HOUSE, FENCE], p=[0.35, 0.25, 0.2, 0.2])
        base_y = rng.uniform(horizon, size * 1.05)
        scale = rng.uniform(0.12, 0.6) * size * (0.7 + 0.9 * (base_y - horizon) / size)
        objects.append((base_y, cls, rng.uniform(-0.1, 1.1) * size, scale))
    for base_y, cls, cx, scale in sorted(objects, key=lambda o: o[0]):
        mask = _object_mask(rng, cls, size, yy, xx, base_y, cx, scale)
        labels[mask] = cls

    image = np.zeros((size, size, 3))
    for cls in np.unique(labels):
        where = labels == cls
        image[where] = _texture(rng, int(cls), size, yy, xx)[where]
    image = np.clip(image + rng.normal(0, 0.015, image.shape), 0, 1)
    return (image * 255 + 0.5).astype(np.uint8), labels


def _object_mask(rng, cls, size, yy, xx, base_y, cx, scale) -> np.ndarray:
    """(size, size) bool footprint of one object standing on row ``base_y`` at column ``cx``."""
    if cls == TREE:
        trunk_w = max(1.0, scale * rng.uniform(0.06, 0.14))
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
            (np.abs(xx - cx) <= (w / 2 + 1) * (yy - (top - roof_h)) / roof_h)
        return body | roof
    if cls == FENCE:
        length, height = scale * rng.uniform(1.0, 2.0), scale * rng.uniform(0.3, 0.5)
        gap = max(2.0, scale * rng.uniform(0.12, 0.25))
        inside = (np.abs(xx - cx) <= length / 2) & (yy <= base_y) & (yy >= base_y - height)
        posts = ((xx - cx) % gap) < 1.0
        rail = (np.abs(yy - (base_y - height * 0.7)) < 0.6)
        return inside & (posts | rail)
    raise ValueError(f"unknown object class {cls}")


def generate_batch(seeds, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Scenes for a sequence of int seeds.

    Returns:
        ``(images, labels)``: (N, size, size, 3) uint8 and (N, size, size) int64.
    """
    seeds = list(seeds)
    if not seeds:
        raise ValueError("seeds must hold at least one seed")
    pairs = [generate_scene(seed, size) for seed in seeds]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
