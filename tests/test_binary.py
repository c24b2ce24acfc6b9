"""A binary source: where the companion lands for any roll, how the flux is split, the
`[binary]` start of a fit, and a fit of simulated exposures with its Fisher errors.

The gradients of `separation`, `position_angle` and `contrast` against finite differences
are checked with every other parameter in `tests/test_gradients.py` (`BINARY_GROUPS`).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from model import ExposureModel, make_spec
from model.constants import ARCSEC, FILTERS
from model.noise import noisy_slopes
from model.optics import Optics
from model.pupil import ami_pupil
from model.source import binary_components, companion_offset
from model.spectrum import bandpass
from scaling.config import BinaryConfig, FitConfig, OptimiserConfig
from scaling.fitting.engine import FitSettings, make_fitter
from scaling.fitting.params import Observation, make_batches, select
from scaling.fitting.precondition import fisher_diagonal
from scaling.fitting.start import initial_shared
from scaling.fitting.uncertainty import fisher_errors, fisher_matrix
from tests.helpers import (
    FILTER,
    IMAGE_SIDE,
    NGROUPS,
    NPIX,
    generic_ami_params,
    generic_detector,
    tiny_ami_model,
)
from tests.test_engine import fit_steps

BINARY = ("separation", "position_angle", "contrast")


def _point(params: dict) -> dict:
    """Point-source parameters (no image, no star field) of a generic exposure."""
    drop = ("log_image", "positions", "log_fluxes", *BINARY)
    return {k: v for k, v in params.items() if k not in drop}


def _binary(params: dict, separation: float, position_angle: float, contrast: float) -> dict:
    values = {"separation": separation, "position_angle": position_angle, "contrast": contrast}
    return {**_point(params), **{k: jnp.asarray(v) for k, v in values.items()}}


# --- where the companion lands ------------------------------------------------------------


def test_position_angle_is_measured_from_north_through_east():
    """Sky axes have north +y and east -x (x west, as the resolved image): at roll 0 a
    companion at PA 0° is at +y, at PA 90° at -x; roll turns the offset counter-clockwise."""
    cases = [(0.0, 0.0, (0.0, 1.0)), (90.0, 0.0, (-1.0, 0.0)), (0.0, 90.0, (-1.0, 0.0))]
    for pa, roll, expected in cases:
        offset = companion_offset(jnp.asarray(1000.0), jnp.asarray(pa), jnp.asarray(roll))
        np.testing.assert_allclose(offset, expected, rtol=0, atol=1e-15)


def _two_pixel_image(offset, ratio):
    """Unit-sum sky image: the primary's share on the centre pixel, the companion's on the
    pixel `offset` (x west, y north) away; log of it with a 1e-30 floor."""
    c = IMAGE_SIDE // 2
    image = np.full((IMAGE_SIDE, IMAGE_SIDE), 1e-30)
    image[c, c] = 1 / (1 + ratio)
    image[c + offset[1], c + offset[0]] = ratio / (1 + ratio)
    return jnp.asarray(np.log(image))


def _sky_binary(offset, scale):
    """(separation mas, position angle degrees) of a pixel offset (x west, y north)."""
    x, y = np.asarray(offset) * scale
    return 1e3 * float(np.hypot(x, y)), float(np.degrees(np.arctan2(-x, y)))


@pytest.mark.parametrize("roll", [0.0, 90.0, 180.0, -90.0])
def test_companion_lands_where_a_resolved_pixel_does(ami, roll):
    """A resolved image of two bright pixels (the primary at the centre, the companion at a
    sky offset) and the binary at that separation and PA give the same illumination, for
    quarter-turn rolls where the rotated pixel falls on a pixel: equal to 1e-12 wherever
    the zero-padded convolution keeps the shifted PSF (it loses what leaves the grid)."""
    offset, contrast = (3, 2), 1.0
    ratio = 10 ** (-0.4 * contrast)
    params = generic_ami_params()
    resolved = {**params, "log_image": _two_pixel_image(offset, ratio)}
    binary = _binary(params, *_sky_binary(offset, ami.optics.psf_pixel_scale), contrast)
    spec = make_spec(FILTER, NGROUPS, roll=roll)
    by_image = np.asarray(ami.illumination(resolved, spec))
    by_binary = np.asarray(ami.illumination(binary, spec))
    dx, dy = np.rint(
        companion_offset(binary["separation"], binary["position_angle"], roll)
        / (ami.optics.psf_pixel_scale)
    ).astype(int)
    m = by_image.shape[0]
    rows, cols = np.mgrid[:m, :m]
    kept = (0 <= rows - dy) & (rows - dy < m) & (0 <= cols - dx) & (cols - dx < m)
    assert kept.mean() > 0.7
    np.testing.assert_allclose(by_binary[kept], by_image[kept], rtol=0, atol=1e-12 * by_image.max())


def _centroid(image):
    """(x, y) centroid in pixels from the grid centre (x along columns, y along rows)."""
    m = image.shape[0]
    y, x = np.mgrid[:m, :m] - (m - 1) / 2
    return np.array([(image * x).sum(), (image * y).sum()]) / image.sum()


@pytest.mark.parametrize("roll", [23.0, 137.0, -61.0])
def test_companion_lands_at_the_rotated_pixel_at_any_roll(field, field_params, roll):
    """Any roll: the companion's light (the binary less its primary) is centred within
    0.15 oversampled pixel of a resolved image of one bright pixel at the same sky offset
    (bilinear rotation spreads that pixel; observed ≤ 0.09, and 0.05 at roll 0 from the
    light lost off the grid); the other rotation sense would put it pixels away."""
    offset, contrast, scale = (3, 2), 1.0, field.optics.psf_pixel_scale
    ratio = 10 ** (-0.4 * contrast)
    c = IMAGE_SIDE // 2
    pixel = np.full((IMAGE_SIDE, IMAGE_SIDE), 1e-30)
    pixel[c + offset[1], c + offset[0]] = 1.0
    params = {**_point(field_params), "position": jnp.array([0.05, -0.03])}
    params["log_flux"] = jnp.asarray(5.0)
    separation, position_angle = _sky_binary(offset, scale)

    def light(p, at):
        return np.asarray(field.illumination(p, make_spec(FILTER, NGROUPS, roll=at)))

    by_image = light({**params, "log_image": jnp.asarray(np.log(pixel))}, roll)
    primary = {**params, "log_flux": params["log_flux"] - np.log10(1 + ratio)}
    for at, close in ((roll, True), (-roll, False)):
        binary = _binary(params, separation, position_angle, contrast)
        companion = light(binary, at) - light(primary, at)
        error = np.abs(_centroid(companion) - _centroid(by_image)).max()
        assert error < 0.15 if close else error > 1.0


# --- flux -----------------------------------------------------------------------------------


def _full_period_model(npix: int = 64) -> ExposureModel:
    """One wavelength of F430M on a grid spanning one period of the MFT: any PSF sums to 1."""
    pupil = ami_pupil(64, 2)
    wavelength = FILTERS[FILTER][0]
    scale = wavelength / pupil.pixel_scale / ARCSEC / npix
    return ExposureModel(Optics(pupil, npix, scale), {FILTER: bandpass(FILTER, 1)}, 2)


def test_binary_total_flux_is_ten_to_the_log_flux():
    """The two stars share 10**log_flux: their rates sum to it to 1e-14, and on a grid
    holding every PSF's whole flux the binary's light equals a single star's to 1e-10
    (and 10**log_flux to 1e-6, the PSF normalisation's own accuracy)."""
    params = _point(generic_ami_params())
    _, rates = binary_components(
        params["position"], params["log_flux"], jnp.asarray(140.0), 63.0, 1.2, 23.0
    )
    total = 10.0 ** float(params["log_flux"])
    assert abs(float(rates.sum()) / total - 1) < 1e-14
    m = _full_period_model()
    spec = make_spec(FILTER, NGROUPS, roll=23.0)
    single = float(m.illumination(params, spec).sum())
    binary = float(m.illumination(_binary(params, 140.0, 63.0, 1.2), spec).sum())
    assert abs(binary / single - 1) < 1e-10
    assert abs(binary / total - 1) < 1e-6


def test_faint_companion_tends_to_a_single_star(ami):
    """As Δm grows the binary tends to the single star at `position`, the difference
    shrinking like the flux ratio 10**(-0.4 Δm)."""
    params = _point(generic_ami_params())
    spec = make_spec(FILTER, NGROUPS, roll=23.0)
    single = np.asarray(ami.illumination(params, spec))

    def excess(contrast):
        binary = np.asarray(ami.illumination(_binary(params, 140.0, 63.0, contrast), spec))
        return np.linalg.norm(binary - single) / np.linalg.norm(single)

    assert excess(30.0) < 1e-11
    np.testing.assert_allclose(excess(10.0) / excess(15.0), 100.0, rtol=1e-4)


# --- the start of a fit ----------------------------------------------------------------------


def test_binary_start_only_when_asked():
    """`[binary]` with separation > 0 adds the three start values (contrast per filter)."""
    m = tiny_ami_model()
    assert not set(BINARY) & set(initial_shared(FitConfig(), m))
    config = FitConfig(binary=BinaryConfig(separation=120.0, position_angle=300.0, contrast=2.5))
    shared = initial_shared(config, m)
    assert float(shared["separation"]) == 120.0
    assert float(shared["position_angle"]) == 300.0
    assert {f: float(v) for f, v in shared["contrast"].items()} == {FILTER: 2.5}


# --- a fit and its errors -----------------------------------------------------------------

TRUTH = {"separation": 150.0, "position_angle": 40.0, "contrast": 1.5}
ROLLS = (0.0, 0.0, 35.0, 35.0)
FITTED = (*BINARY, "position", "log_flux")
SETTINGS = FitSettings({name: OptimiserConfig("sgd", 1.0, 0, True) for name in FITTED})
STEPS = 25
NAMES = [f"x{i}" for i in range(len(ROLLS))]


def _tree(rng, separation, position_angle, contrast, position, log_flux) -> dict:
    shared = {**generic_detector(rng), "aberrations": {FILTER: 20.0 * rng.standard_normal(14)}}
    shared |= {"separation": separation, "position_angle": position_angle}
    shared["contrast"] = {FILTER: contrast}
    exposure = {"position": position, "log_flux": log_flux, "spectral_slope": np.zeros(4)}
    tree = {"shared": shared, "epoch": {}, "exposure": exposure}
    return jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.float64), tree)


class BinaryCampaign:
    """Four exposures of a binary at two rolls (tiny AMI model): the truth, mean slopes,
    noisy realisations and one compiled fitter (its Fisher scaling taken at the truth)."""

    def __init__(self):
        self.model = tiny_ami_model()
        rng = np.random.default_rng(0)
        position = 0.01 * rng.standard_normal((4, 2))
        log_flux = 5.0 + 0.02 * rng.standard_normal(4)
        self.truth = _tree(rng, *TRUTH.values(), position, log_flux)
        self.specs = [make_spec(FILTER, NGROUPS, roll=r, nints=20) for r in ROLLS]
        self.means = [
            np.asarray(self.model.slopes(select(self.truth, FILTER, i), s))
            for i, s in enumerate(self.specs)
        ]
        self.fitter = make_fitter(self.model, self.truth, self.batches(0), SETTINGS)

    def batches(self, seed: int):
        """Batches of one noise realisation."""
        rng = np.random.default_rng([1, seed])
        read_noise = float(self.truth["shared"]["read_noise"])
        bad = np.zeros((NPIX, NPIX), bool)
        observations = [
            Observation(name, None, spec, noisy_slopes(rng, mean, read_noise, 20), bad)
            for name, spec, mean in zip(NAMES, self.specs, self.means, strict=True)
        ]
        return make_batches(observations, NAMES, [])

    def start(self, separation, position_angle, contrast) -> dict:
        """The truth with the binary at the given start, fluxes and positions off too."""
        start = jax.tree.map(lambda x: x, self.truth)
        binary = {"separation": separation, "position_angle": position_angle}
        start["shared"] |= {k: jnp.asarray(v, dtype=jnp.float64) for k, v in binary.items()}
        start["shared"]["contrast"] = {FILTER: jnp.asarray(contrast, dtype=jnp.float64)}
        start["exposure"]["log_flux"] = self.truth["exposure"]["log_flux"] + 0.05
        start["exposure"]["position"] = self.truth["exposure"]["position"] + 0.003
        return start

    def fit(self, start: dict, batches) -> dict:
        path, _, _ = fit_steps(self.fitter, start, batches, STEPS)
        return path[-1]


def _binary_values(params: dict) -> np.ndarray:
    """(separation, position angle, contrast) of a parameter tree or of errors."""
    shared = params.get("shared", params)
    return np.array([float(shared[n]) for n in BINARY[:2]] + [float(shared["contrast"][FILTER])])


@pytest.fixture(scope="module")
def campaign():
    return BinaryCampaign()


def test_fisher_matrix_diagonal_is_the_preconditioner(campaign):
    """diag(F) over shared and per-exposure entries equals `fisher_diagonal` (1e-10)."""
    params, batches = campaign.truth, campaign.batches(0)
    names = ("separation", "contrast", "log_flux")
    diagonal = np.diag(fisher_matrix(campaign.model, params, batches, names))
    expected = fisher_diagonal(campaign.model, params, batches, names)
    # ravel_pytree order: parts, then names, sorted: exposure log_flux, shared contrast, sep.
    flat = np.concatenate(
        [
            expected["exposure"]["log_flux"],
            [expected["shared"]["contrast"][FILTER], expected["shared"]["separation"]],
        ]
    )
    np.testing.assert_allclose(diagonal, flat, rtol=1e-10)


def test_errors_refuse_unknown_names(campaign):
    with pytest.raises(ValueError, match="not in the parameters"):
        fisher_errors(campaign.model, campaign.truth, campaign.batches(0), ("separtion",))


def test_two_starts_converge_to_the_truth_within_fisher_errors(campaign):
    """From either side of the truth the fit of one realisation reaches the same optimum
    (to 1e-3 σ) and the truth lies within 3 σ of it."""
    batches = campaign.batches(0)
    fits = [campaign.fit(campaign.start(*s), batches) for s in ((130, 30, 2.0), (170, 52, 1.0))]
    errors = fisher_errors(campaign.model, fits[0], batches, FITTED)
    sigma = _binary_values(errors)
    a, b = (_binary_values(f) for f in fits)
    assert np.all(np.abs(a - b) < 1e-3 * sigma)
    assert np.all(np.abs(a - np.array(list(TRUTH.values()))) < 3 * sigma)
    for name in ("position", "log_flux"):
        assert errors[name].shape == campaign.truth["exposure"][name].shape
        pull = (fits[0]["exposure"][name] - campaign.truth["exposure"][name]) / errors[name]
        assert float(jnp.max(jnp.abs(pull))) < 4.0


def test_fisher_errors_match_the_scatter_of_noise_realisations(campaign):
    """Fitted from the truth in 16 noise realisations, the spread of separation, PA and
    contrast agrees with the Fisher σ at the truth within a factor 2 (the sample σ of 16
    is good to about 20 %)."""
    fits = [_binary_values(campaign.fit(campaign.truth, campaign.batches(s))) for s in range(16)]
    scatter = np.std(fits, axis=0, ddof=1)
    sigma = _binary_values(
        fisher_errors(campaign.model, campaign.truth, campaign.batches(0), FITTED)
    )
    assert np.all((scatter > sigma / 2) & (scatter < 2 * sigma)), (scatter, sigma)
