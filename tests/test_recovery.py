"""Science acceptance of the fitting engine at reduced size (issue 4): a simulated Io
campaign (3 epochs × 2 rolls + 2 calibrators, one filter, the full true detector) is
fitted from the nominal start by `scaling fit`, and the result is compared with the truth.

Tolerances are the acceptance criteria themselves: NCC ≥ 0.9 with the truth blurred to
λ/B_max in every epoch; the 3 brightest visible volcanoes within 1 detector pixel of a
recovered peak; their motion between consecutive epochs within 1 pixel of the true one;
the aberration coefficients (canonical: no global piston or tip/tilt, see `scaling.report.truth`)
within 20% RMS of the injected ones; reduced chi-squared in [0.8, 1.3]. Measured (2 CPU
cores, 300 steps of about 80 ms): NCC ≥ 0.986, volcanoes ≤ 0.33 px, motion ≤ 0.43 px
(peaks placed to a fraction of an image pixel; 0.43 and 0.53 px with whole-pixel peaks),
aberrations 8.5%, chi2 1.052.
"""

import dataclasses

import pytest

from scaling.config import load_config
from scaling.fit import fit_campaign

from .campaigns import simulated_campaign

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    root = tmp_path_factory.mktemp("recovery")
    sim = simulated_campaign("configs/io_recovery.toml", root)
    base = load_config("configs/io_recovery_fit.toml")
    config = dataclasses.replace(
        base,
        campaign=str(root / "campaign.zarr"),
        results=str(root / "results.zarr"),
        truth=str(sim),
        tracking=dataclasses.replace(base.tracking, uri=f"sqlite:///{root / 'mlflow.db'}"),
    )
    return fit_campaign(config, progress=False)


def _values(metrics: dict[str, float], prefix: str) -> list[float]:
    return [v for k, v in metrics.items() if k.startswith(prefix + ".")]


def test_images_match_blurred_truth(outcome):
    nccs = _values(outcome.truth_metrics, "ncc")
    assert len(nccs) == 3
    assert min(nccs) >= 0.9


def test_brightest_volcanoes_found_within_a_pixel(outcome):
    offsets = _values(outcome.truth_metrics, "volcano_offset_pix")
    assert len(offsets) == 3
    assert max(offsets) <= 1.0


def test_volcano_motion_within_a_pixel(outcome):
    errors = _values(outcome.truth_metrics, "volcano_motion_error_pix")
    assert len(errors) == 2
    assert max(errors) <= 1.0


def test_aberrations_recovered(outcome):
    assert outcome.truth_metrics["aberration_rms_error_fraction.F430M"] <= 0.2


def test_reduced_chi2_near_one(outcome):
    assert 0.8 <= outcome.reduced_chi2 <= 1.3
