"""Held-out validation pixels: how a regularisation weight is chosen honestly.

A fixed, seeded random `fraction` of each exposure's good pixels is left out of the
training loss (masked as if bad) and scored alone as the validation NLL. The subset of
an exposure depends only on the seed and the exposure's name, so every trial of a sweep,
every worker layout and every resumed run holds out the same pixels. An image that
overfits the noise of the pixels it sees predicts the held-out ones worse; a weight that
over-smooths predicts every pixel worse: the least validation NLL lies between.
"""

import dataclasses
import hashlib

import numpy as np

from scaling.fitting.params import Observation

METRIC = "validation_nll"
"""The name under which fits log (and sweeps report) the validation NLL."""


def held_out_pixels(name: str, bad: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """(p, p) True on round(fraction × good pixels) of the good pixels of exposure
    `name`, drawn by a generator seeded with (seed, name)."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    rng = np.random.default_rng(np.frombuffer(digest, dtype=np.uint32))
    good = np.flatnonzero(~bad)
    chosen = rng.choice(good, size=round(fraction * good.size), replace=False)
    mask = np.zeros(bad.size, dtype=bool)
    mask[chosen] = True
    return mask.reshape(bad.shape)


def split_held_out(
    observations: list[Observation], fraction: float, seed: int
) -> tuple[list[Observation], list[Observation]]:
    """(training, validation) observations: the same data, the held-out pixels masked in
    the first and every other pixel masked in the second."""
    training, validation = [], []
    for o in observations:
        held = held_out_pixels(o.name, np.asarray(o.bad), fraction, seed)
        training.append(dataclasses.replace(o, bad=o.bad | held))
        validation.append(dataclasses.replace(o, bad=o.bad | ~held))
    return training, validation
