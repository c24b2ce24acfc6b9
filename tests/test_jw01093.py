"""The program-1093 study: its configs select the right real exposures, a short fit of one
real calibrator exposure runs, and the study's agreement verdicts.

The data tests read `../shared/data/jw01093/` (beside the repository) and skip without it.
"""

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from model.constants import PIXEL_SCALE
from scaling.config import SelectConfig, load_config
from scaling.data.ingest import ingest
from scaling.fitting.start import open_selection
from scaling.fitting.stepper import InProcess
from scaling.study import compare

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "jw01093"


@pytest.fixture(scope="module")
def store(real_files, tmp_path_factory):
    files = real_files
    path = tmp_path_factory.mktemp("jw01093") / "campaign.zarr"
    ingest([str(f) for f in files], path, progress=False)
    return path


def _config(name: str, store: Path, **changes):
    config = load_config(CONFIGS / f"{name}_fit.toml")
    return dataclasses.replace(config, campaign=str(store), **changes)


@pytest.mark.parametrize(
    ("name", "observations", "targets"),
    [
        ("hd37093", {15: 3, 16: 3}, {"HD-37093"}),
        ("hd36805_own", {18: 3, 19: 3}, {"HD-36805"}),
        ("calibrators", {15: 3, 16: 3, 18: 3, 19: 3}, {"HD-37093", "HD-36805"}),
        ("abdor_012", {12: 4}, {"AB-DOR"}),
        ("abdor_013", {13: 4}, {"AB-DOR"}),
    ],
)
def test_study_configs_select_the_right_exposures(store, name, observations, targets):
    campaign = open_selection(_config(name, store))
    found = {}
    for e in campaign.exposures:
        found[e.observation] = found.get(e.observation, 0) + 1
    assert found == observations
    assert {e.target for e in campaign.exposures} == targets
    assert {e.kind for e in campaign.exposures} == {"rate"}


def test_one_real_calibrator_exposure_fits(store):
    """HD 37093, F430M, observation 015 alone: one exposure; its position starts at the
    centroid (~0.35" off centre), a few steps (a smaller model) lower a finite χ² and move
    the position by less than a pixel."""
    select = SelectConfig(targets=("HD-37093",), filters=("F430M",), observations=(15,))
    config = _config("hd37093", store, select=select, steps=3)
    config = dataclasses.replace(
        config, instrument=dataclasses.replace(config.instrument, oversample=2, pupil_npix=128)
    )
    campaign = open_selection(config)
    assert campaign.names == ("jw01093015001_03103_00001_nis",)
    model = config.instrument.build(["F430M"])
    stepper = InProcess(config, campaign, model, [])
    start = np.asarray(stepper.params()["exposure"]["position"][0])
    assert 0.3 < start[0] < 0.4 and abs(start[1]) < 0.1
    chi2 = [stepper.chi_squared()[0]]
    for _ in range(config.steps):
        stepper.step()
    chi2.append(stepper.chi_squared()[0])
    assert np.all(np.isfinite(chi2)) and chi2[1] < chi2[0]
    moved = np.asarray(stepper.params()["exposure"]["position"][0]) - start
    assert np.hypot(*moved) < PIXEL_SCALE


def _fit(separation, angle, contrast, sigma):
    return {
        "values": {
            "separation": separation,
            "position_angle": angle,
            "contrast": {"F430M": contrast},
        },
        "sigma": {"separation": sigma, "position_angle": sigma / 100, "contrast": {"F430M": 0.01}},
    }


def test_agreement_verdicts():
    """Within 3σ; beyond it but within 4% / 1.5° / 0.2 mag ("systematics"); beyond both."""
    rows = compare(_fit(350.0, 359.5, 4.3, 1.0), _fit(352.0, 0.5, 4.32, 1.0))
    assert rows["separation"]["verdict"] == "3σ"
    assert rows["position_angle"]["difference"] == pytest.approx(-1.0)  # across 0°
    assert rows["position_angle"]["verdict"] == "systematics"
    assert rows["contrast F430M"]["verdict"] == "3σ"
    rows = compare(_fit(350.0, 10.0, 4.3, 0.1), _fit(370.0, 10.0, 4.6, 0.1))
    assert rows["separation"]["verdict"] == "disagree"  # 20 mas > 4% of 360
    assert rows["contrast F430M"]["verdict"] == "disagree"
