"""Held-out validation pixels: a seeded, stable subset of good pixels, out of the training
loss and alone in the validation NLL."""

import dataclasses

import numpy as np
import pytest

from scaling.fitting.objective import nll_sum
from scaling.fitting.params import make_batches
from scaling.fitting.validation import held_out_pixels, split_held_out
from tests.campaigns import mixed_campaign


def test_held_out_pixels_are_a_stable_seeded_share_of_the_good_ones():
    bad = np.zeros((40, 40), dtype=bool)
    bad[:4] = True
    held = held_out_pixels("jw01093012001_03102_00001_nis", bad, 0.05, 0)
    assert held.sum() == round(0.05 * (~bad).sum()) and not (held & bad).any()
    np.testing.assert_array_equal(
        held, held_out_pixels("jw01093012001_03102_00001_nis", bad, 0.05, 0)
    )
    assert not np.array_equal(held, held_out_pixels("jw01093012001_03102_00001_nis", bad, 0.05, 1))
    assert not np.array_equal(held, held_out_pixels("jw01093013001_03102_00001_nis", bad, 0.05, 0))


@pytest.fixture(scope="module")
def split():
    m, truth, observations, names, epochs = mixed_campaign()
    training, validation = split_held_out(observations, 0.1, 3)
    return m, truth, observations, training, validation, names, epochs


def test_training_and_validation_masks_partition_the_good_pixels(split):
    _, _, observations, training, validation, *_ = split
    for o, t, v in zip(observations, training, validation, strict=True):
        assert not (~t.bad & ~v.bad).any()
        np.testing.assert_array_equal(~t.bad | ~v.bad, ~o.bad)
        assert 0.09 < (~v.bad).sum() / (~o.bad).sum() < 0.11


def test_held_out_data_reach_only_the_validation_nll(split):
    """Changing the data on held-out pixels leaves the training NLL as it was and
    changes the validation NLL."""
    m, truth, _, training, validation, names, epochs = split

    def nlls(train, valid):
        return (
            float(nll_sum(m, truth, make_batches(train, names, epochs))),
            float(nll_sum(m, truth, make_batches(valid, names, epochs))),
        )

    def corrupted(observations, reference):
        out = []
        for o, v in zip(observations, reference, strict=True):
            slopes = np.where(~v.bad[None], o.slopes * 1.5 + 100.0, o.slopes)
            out.append(dataclasses.replace(o, slopes=slopes))
        return out

    before = nlls(training, validation)
    after = nlls(corrupted(training, validation), corrupted(validation, validation))
    assert after[0] == before[0]
    assert after[1] > before[1] + 1.0
