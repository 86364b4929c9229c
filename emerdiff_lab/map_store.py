"""Raw pixel-change maps kept on disk, so that separate processes (the figure notebooks run side
by side) share them: one ``maps-<digest>.npz`` per (stage key, weights fingerprint, dtype,
device, image side, pixels), holding the k-means masks and the raw maps."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from .io import atomic_file


class MapStore:
    """A folder of stored raw maps (made on first write)."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, key: tuple, weights: str, model, pixels: torch.Tensor) -> Path:
        """The file of ``key`` (a :class:`~emerdiff_lab.session.Session` stage key) for
        ``model``'s weights (fingerprint ``weights``), dtype and device, and the (3, S, S)
        ``pixels`` the model sees."""
        settings = [list(item) if isinstance(item, tuple) else item for item in key]
        digest = hashlib.sha256(json.dumps(
            [settings, weights, str(model.dtype), str(model.device), int(pixels.shape[-1])],
            default=str).encode())
        digest.update(pixels.detach().float().cpu().contiguous().numpy().tobytes())
        return self.folder / f"maps-{digest.hexdigest()[:24]}.npz"

    @staticmethod
    def read(path: Path) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(lowres (h, w) int64, raw maps (K, S, S) float32)``, or None when not stored."""
        if not path.is_file():
            return None
        with np.load(path) as stored:
            return torch.from_numpy(stored["lowres"]), torch.from_numpy(stored["raw_maps"])

    @staticmethod
    def write(path: Path, lowres: torch.Tensor, maps: torch.Tensor) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as handle:  # a killed run never leaves a truncated entry
            np.savez(handle, lowres=lowres.cpu().numpy(), raw_maps=maps.cpu().numpy())
