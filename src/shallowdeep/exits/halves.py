"""An honest split of one data set: a seeded random half chooses the threshold, the other half measures it."""

from __future__ import annotations

import hashlib

import numpy as np

from ..errors import UserError

HALVES_NOTE = "the threshold was chosen on one random half of the test split; every 'test' figure is on the other half"


def split_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted index arrays ``(calibration, evaluation)`` covering ``range(n)``: a seeded random
    ``n // 2`` samples and the rest."""
    if n < 2:
        raise UserError(f"cannot split {n} sample(s) into a calibration half and an evaluation half")
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[: n // 2]), np.sort(order[n // 2:])


def index_hash(index: np.ndarray) -> str:
    """The sha256 of an index array (as little-endian int64), to record which samples a half holds."""
    return hashlib.sha256(np.asarray(index, dtype="<i8").tobytes()).hexdigest()
