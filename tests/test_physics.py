"""Physics of the forward model: flux, fringes, source geometry, detector and ramp.

Each test states the property it checks and compares against an independent reference
(Parseval, the mask geometry, NumPy, analytic moments) with an explicit tolerance.
"""

import itertools
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from scipy.signal import convolve2d

from model.constants import ARCSEC, FILTERS, HOLE_CENTRES, HOLE_FLAT_TO_FLAT, PIXEL_SCALE
from model.detector import apply_ipc, apply_jitter, downsample
from model.exposure import make_spec
from model.optics import Optics
from model.pupil import NM, Pupil, ami_pupil, circular_pupil
from model.ramp import accumulate, nonlinearity, ramp_signal
from model.source import rotate_image, rotate_points
from tests.helpers import IMAGE_SIDE, generic_detector

PUPIL_NPIX = 64
NTERMS_AMI = 7 * 2  # ami_pupil(PUPIL_NPIX, 2)


@pytest.fixture(scope="module")
def mask():
    return ami_pupil(PUPIL_NPIX, 2)


def _moments(image):
    """(total, centroid (x, y), variance (x, y)) with x along columns, y along rows."""
    n = image.shape[-1]
    y, x = np.mgrid[0:n, 0:n] - (n - 1) / 2
    total = image.sum()
    cx, cy = (image * x).sum() / total, (image * y).sum() / total
    vx = (image * (x - cx) ** 2).sum() / total
    vy = (image * (y - cy) ** 2).sum() / total
    return total, np.array([cx, cy]), np.array([vx, vy])


def _gaussian(n, centre=(0.0, 0.0), sigma=1.5, peak=1.0):
    y, x = np.mgrid[0:n, 0:n] - (n - 1) / 2
    return peak * np.exp(-((x - centre[0]) ** 2 + (y - centre[1]) ** 2) / (2 * sigma**2))


# --- flux conservation --------------------------------------------------------------------


def _full_period_scale(pupil, wavelength, npix, periods=1):
    """Oversampled pixel (arcsec) such that `npix` pixels span `periods` × λ / pupil pixel."""
    return periods * wavelength / pupil.pixel_scale / ARCSEC / npix


@pytest.mark.parametrize("npix", [64, 96, 128])
@pytest.mark.parametrize("filter_name", sorted(FILTERS))
def test_psf_flux_is_conserved_over_one_period(mask, npix, filter_name):
    """Unaberrated, unit-transmission mask: a grid spanning one full period of the MFT
    (λ / pupil pixel) holds exactly the pupil's power, so the PSF sums to 1; summing
    2×2 blocks into detector pixels keeps it."""
    wavelength = FILTERS[filter_name][0]
    optics = Optics(mask, npix, _full_period_scale(mask, wavelength, npix))
    psf = optics.psf(jnp.array([wavelength]), jnp.array([1.0]), jnp.zeros(NTERMS_AMI), jnp.zeros(2))
    assert abs(float(psf.sum()) - 1.0) < 1e-6
    assert abs(float(downsample(psf, 2).sum()) - 1.0) < 1e-6
    # Phases (aberrations, an off-centre source) only move light within the period.
    rng = np.random.default_rng(0)
    moved = optics.psf(
        jnp.array([wavelength]),
        jnp.array([1.0]),
        jnp.asarray(40.0 * rng.standard_normal(NTERMS_AMI)),
        jnp.array([0.37, -0.21]),
    )
    assert abs(float(moved.sum()) - 1.0) < 1e-6


def test_circular_pupil_psf_flux_is_conserved():
    pupil = circular_pupil(PUPIL_NPIX, 1.0, (4, 5, 6))
    wavelength = FILTERS["F430M"][0]
    optics = Optics(pupil, 80, _full_period_scale(pupil, wavelength, 80))
    psf = optics.psf(jnp.array([wavelength]), jnp.array([1.0]), jnp.zeros(3), jnp.zeros(2))
    assert abs(float(downsample(psf, 2).sum()) - 1.0) < 1e-6


def test_polychromatic_psf_flux_is_one_per_period(mask):
    """Every wavelength carries unit flux per period of its own: on a grid spanning K_i
    whole periods of λ_i (λ_i = 4 λ_0 / K_i, K = 4, 5, 6) the weighted PSF sums to
    Σ w_i K_i², which is 1 per period for each wavelength."""
    base = FILTERS["F480M"][0]
    periods = np.array([4, 5, 6])
    wavelengths = jnp.asarray(base * 4 / periods)
    weights = jnp.array([0.2, 0.5, 0.3])
    npix = 360  # divisible by each K and by the oversampling; ≥ pupil support per period
    optics = Optics(mask, npix, _full_period_scale(mask, base, npix, periods=4))
    psf = optics.psf(wavelengths, weights, jnp.zeros(NTERMS_AMI), jnp.zeros(2))
    expected = float(weights @ periods**2)
    assert abs(float(psf.sum()) / expected - 1.0) < 1e-6
    assert abs(float(downsample(psf, 2).sum()) / expected - 1.0) < 1e-6


# --- fringe frequencies -------------------------------------------------------------------

BASELINE_PAIRS = list(itertools.combinations(range(len(HOLE_CENTRES)), 2))
BASELINES = np.array([HOLE_CENTRES[j] - HOLE_CENTRES[i] for i, j in BASELINE_PAIRS])


def test_mask_has_21_distinct_baselines():
    """Non-redundant: the 42 vectors ±B and the origin are separated by more than a hole."""
    assert BASELINES.shape == (21, 2)
    points = np.concatenate([BASELINES, -BASELINES, np.zeros((1, 2))])
    separation = np.linalg.norm(points[:, None] - points[None], axis=-1)
    np.fill_diagonal(separation, np.inf)
    assert separation.min() > HOLE_FLAT_TO_FLAT


def _zoomed_dft(image, u, v):
    """|DFT| of `image` (rows = y) at frequencies u (x) and v (y), cycles per pixel."""
    n = image.shape[-1]
    x = np.arange(n) - n // 2
    ex = np.exp(-2j * np.pi * np.outer(x, u))
    ey = np.exp(-2j * np.pi * np.outer(v, x))
    return np.abs(ey @ image @ ex)


@pytest.mark.parametrize("filter_name", sorted(FILTERS))
def test_fringes_sit_at_baselines_over_wavelength(filter_name):
    """The unaberrated PSF's Fourier transform (the mask's autocorrelation) peaks at B/λ.

    In cycles per PSF pixel the expected frequency is B/λ × pixel (radians), with x along
    columns and y along rows. The |FFT| maximum in the 3×3 cells around it must lie within
    one Fourier cell (1/npix); a zoomed DFT (0.05-cell steps, ±1 cell) must peak within
    0.25 cell (observed ≤ 0.1). Each splodge carries one hole pair, 1/7 of the zero-frequency
    power (to 5 %, observed ≤ 2.2 %); well away from every splodge the power is < 1e-3 of
    it (observed ~5e-5).
    """
    wavelength = FILTERS[filter_name][0]
    npix, scale = 128, PIXEL_SCALE / 2
    optics = Optics(ami_pupil(PUPIL_NPIX, 1), npix, scale)
    psf = np.asarray(
        optics.psf(jnp.array([wavelength]), jnp.array([1.0]), jnp.zeros(7), jnp.zeros(2))
    )
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(psf)))
    centre = npix // 2
    dc = spectrum[centre, centre]
    uv = BASELINES / wavelength * scale * ARCSEC  # (21, 2) cycles per pixel, (u=x, v=y)
    assert np.abs(uv).max() < 0.5  # sampled without aliasing
    grid_offsets, zoom_offsets, ratios = [], [], []
    fine = np.linspace(-1.0, 1.0, 41) / npix
    for u, v in uv:
        row, col = round(centre + v * npix), round(centre + u * npix)
        window = spectrum[row - 1 : row + 2, col - 1 : col + 2]
        r, c = np.unravel_index(np.argmax(window), window.shape)
        grid_offsets.append(
            np.hypot(row - 1 + r - centre - v * npix, col - 1 + c - centre - u * npix)
        )
        zoom = _zoomed_dft(psf, u + fine, v + fine)
        r, c = np.unravel_index(np.argmax(zoom), zoom.shape)
        zoom_offsets.append(np.hypot(fine[r], fine[c]) * npix)
        ratios.append(zoom.max() / dc)
    assert max(grid_offsets) < 1.0, grid_offsets
    assert max(zoom_offsets) < 0.25, zoom_offsets
    np.testing.assert_allclose(ratios, 1 / 7, rtol=0.05)
    # Mid-way between two splodges, far (> 1.3 m) from all of them and from the origin.
    points = np.concatenate([BASELINES, -BASELINES, np.zeros((1, 2))])
    quiet = []
    for a, b in itertools.combinations(points, 2):
        mid = (a + b) / 2
        if np.linalg.norm(points - mid, axis=1).min() > 1.3:
            u, v = mid / wavelength * scale * ARCSEC
            quiet.append(spectrum[round(centre + v * npix), round(centre + u * npix)] / dc)
    assert len(quiet) > 10
    assert max(quiet) < 1e-3


# --- source geometry ----------------------------------------------------------------------


def test_source_position_moves_psf_along_detector_axes():
    """+x moves the PSF to higher columns and +y to higher rows by position / pixel."""
    pupil = circular_pupil(PUPIL_NPIX, 1.0, (4,))
    scale = 0.1875
    optics = Optics(pupil, 48, scale)
    wl, w, coeffs = jnp.array([4.3e-6]), jnp.array([1.0]), jnp.zeros(1)
    centred = np.asarray(optics.psf(wl, w, coeffs, jnp.zeros(2)))
    moved = np.asarray(optics.psf(wl, w, coeffs, jnp.array([3 * scale, -2 * scale])))
    # Same continuous PSF sampled on a grid shifted by (3, -2) pixels: equal where they overlap.
    np.testing.assert_allclose(moved[:-2, 3:], centred[2:, :-3], rtol=0, atol=1e-12)


def _pupil_plane(pupil):
    """(x, y) pupil coordinates, metres, on the pupil's grid."""
    n = pupil.npix
    x = (np.arange(n) - (n - 1) / 2) * pupil.pixel_scale
    return np.meshgrid(x, x)


def test_global_tilt_is_a_source_shift(mask):
    """An OPD a·x + b·y over the pupil is exactly the unaberrated PSF moved by (a, b)
    radians: why the pupil bases leave global tip/tilt to the source positions."""
    xx, yy = _pupil_plane(mask)
    slope = 2e-7
    planes = np.stack([xx, yy]) * slope * (np.asarray(mask.transmission) > 0)
    tilting = Pupil(mask.transmission, jnp.asarray(planes), jnp.eye(2), mask.pixel_scale)
    optics = Optics(tilting, 64, 0.02)
    wl, w, ab = jnp.array([4.3e-6, 4.6e-6]), jnp.array([0.4, 0.6]), jnp.array([1.0, -0.5])
    tilted = np.asarray(optics.psf(wl, w, ab, jnp.zeros(2)))
    moved = np.asarray(optics.psf(wl, w, jnp.zeros(2), ab * slope / ARCSEC))
    np.testing.assert_allclose(tilted, moved, rtol=0, atol=1e-12 * tilted.max())


def _gram(pupil):
    """Transmission-weighted mean of products of the basis OPDs, nm²."""
    basis = np.asarray(pupil.basis).reshape(pupil.basis.shape[0], -1) / NM
    weight = np.asarray(pupil.transmission).ravel()
    return (basis * weight) @ basis.T / weight.sum()


@pytest.mark.parametrize("n_terms", [3, 4])
def test_hole_basis_is_orthonormal_less_global_piston_and_tilt(n_terms):
    """Per-hole terms with a flat piston and linear tip/tilt, orthonormal over equal holes:
    the Gram matrix has exactly 3 null directions (global piston and tip/tilt, removed)
    and every other eigenvalue is 1/7 (unit RMS over one hole of seven)."""
    pupil = ami_pupil(128, n_terms)
    values = np.linalg.eigvalsh(_gram(pupil))
    assert np.all(np.abs(values[:3]) < 1e-12)
    np.testing.assert_allclose(values[3:], 1 / 7, rtol=2e-3)
    assert np.isclose(np.trace(np.asarray(pupil.observable)), 7 * n_terms - 3, atol=1e-9)


def test_pistons_alone_lose_only_the_global_piston():
    """With one term per hole a global tilt is not a combination of hole pistons."""
    pupil = ami_pupil(PUPIL_NPIX, 1)
    assert np.isclose(np.trace(np.asarray(pupil.observable)), 6, atol=1e-9)
    np.testing.assert_allclose(pupil.canonical(jnp.ones(7)), 0, atol=1e-12)


@pytest.mark.parametrize("pupil", [ami_pupil(PUPIL_NPIX, 3), circular_pupil(PUPIL_NPIX)])
def test_canonical_coefficients_keep_the_opd(pupil):
    """`canonical` is an idempotent projection that leaves the OPD unchanged."""
    c = 20.0 * np.random.default_rng(3).standard_normal(pupil.basis.shape[0])
    short = pupil.canonical(jnp.asarray(c))
    scale = np.abs(np.asarray(pupil.opd(c))).max()
    np.testing.assert_allclose(pupil.opd(short), pupil.opd(c), rtol=0, atol=1e-12 * scale)
    np.testing.assert_allclose(pupil.canonical(short), short, rtol=0, atol=1e-12 * np.abs(c).max())
    assert np.linalg.norm(short) <= np.linalg.norm(c)


def _render(points, amplitudes, n=41, sigma=1.3):
    """Gaussian blobs at (x, y) pixel offsets from the centre (rows = y)."""
    return sum(_gaussian(n, p, sigma, a) for p, a in zip(points, amplitudes, strict=True))


def _local_centroids(image, points, radius=4.0):
    n = image.shape[-1]
    y, x = np.mgrid[0:n, 0:n] - (n - 1) / 2
    out = []
    for px, py in points:
        w = image * ((x - px) ** 2 + (y - py) ** 2 < radius**2)
        out.append([(w * x).sum() / w.sum(), (w * y).sum() / w.sum()])
    return np.array(out)


@pytest.mark.parametrize("angle", [23.0, 90.0, 137.0, -61.0])
def test_rotating_sources_commutes_with_rotating_image(angle):
    """rotate_image(render(p), θ) ≈ render(rotate_points(p, θ)): centroids agree to
    0.05 pixel (observed ≤ 0.005) and the images to 12 % rms (bilinear smoothing, observed
    ≈ 7 %); rotating the other way would put the blobs pixels away."""
    points = np.array([[6.0, 2.0], [-4.0, 7.5], [3.3, -8.1], [-9.0, -3.0]])
    amplitudes = np.array([1.0, 0.6, 0.8, 0.4])
    rotated_points = np.asarray(rotate_points(jnp.asarray(points), angle))
    by_image = np.asarray(rotate_image(jnp.asarray(_render(points, amplitudes)), angle))
    by_points = _render(rotated_points, amplitudes)
    centroid_error = np.abs(
        _local_centroids(by_image, rotated_points) - _local_centroids(by_points, rotated_points)
    )
    assert centroid_error.max() < 0.05
    assert np.linalg.norm(by_image - by_points) / np.linalg.norm(by_points) < 0.12
    wrong_way = _local_centroids(by_image, np.asarray(rotate_points(jnp.asarray(points), -angle)))
    assert np.abs(wrong_way - np.asarray(rotate_points(jnp.asarray(points), -angle))).max() > 1.0


def test_rotate_image_identity_and_quarter_turns():
    """0° is the identity; +90° (counter-clockwise, x → y with rows = y) is np.rot90(k=-1)
    because NumPy's rot90 turns the array as printed, row 0 on top."""
    image = jnp.asarray(np.random.default_rng(0).random((7, 7)))
    np.testing.assert_array_equal(rotate_image(image, 0.0), image)
    np.testing.assert_allclose(rotate_image(image, 90.0), np.rot90(image, -1), atol=1e-12)
    np.testing.assert_allclose(rotate_image(image, -90.0), np.rot90(image, 1), atol=1e-12)
    np.testing.assert_allclose(rotate_image(image, 180.0), np.rot90(image, 2), atol=1e-12)
    # A point at +x turns to +y under rotate_points too.
    np.testing.assert_allclose(
        rotate_points(jnp.array([[1.0, 0.0]]), 90.0), [[0.0, 1.0]], atol=1e-15
    )


def test_roll_rotates_resolved_source_like_its_points(field, field_params):
    """End to end: a sky image with a compact blob at d, seen at roll θ, matches the same
    blob placed at rotate_points(d, θ) at roll 0 (within bilinear interpolation error)."""
    n, offset, angle = IMAGE_SIDE + 6, np.array([4.0, 1.5]), 30.0

    def params_for(centre):
        blob = _gaussian(n, centre, sigma=1.0) + 1e-9
        p = {k: v for k, v in field_params.items() if k not in ("positions", "log_fluxes")}
        return {
            **p,
            "position": jnp.zeros(2),
            "log_flux": jnp.asarray(5.0),
            "log_image": jnp.asarray(np.log(blob)),
        }

    spec_rolled = make_spec("F430M", 5, roll=angle)
    spec_plain = make_spec("F430M", 5, roll=0.0)
    rolled = np.asarray(field.illumination(params_for(offset), spec_rolled))
    target = rotate_points(jnp.asarray(offset[None]), angle)[0]
    placed = np.asarray(field.illumination(params_for(np.asarray(target)), spec_plain))
    assert np.linalg.norm(rolled - placed) / np.linalg.norm(placed) < 0.05
    assert np.abs(_moments(rolled)[1] - _moments(placed)[1]).max() < 0.05


# --- detector -----------------------------------------------------------------------------


def test_jitter_conserves_flux_and_adds_its_variance():
    """Gaussian jitter of σ pixels: flux unchanged, each axis' variance grows by σ²."""
    image = _gaussian(41, (1.3, -0.7), sigma=1.5)
    sigma = 1.7
    blurred = np.asarray(apply_jitter(jnp.asarray(image), sigma))
    total0, centre0, var0 = _moments(image)
    total1, centre1, var1 = _moments(blurred)
    assert abs(total1 / total0 - 1) < 1e-12
    np.testing.assert_allclose(centre1, centre0, atol=1e-9)
    np.testing.assert_allclose(var1 - var0, sigma**2, rtol=1e-6)
    np.testing.assert_allclose(apply_jitter(jnp.asarray(image), 0.0), image, atol=1e-15)


def test_ipc_with_unit_sum_kernel_conserves_charge():
    charge = jnp.asarray(np.stack([_gaussian(21, sigma=1.2, peak=p) for p in (1e3, 5e3)]))
    kernel = np.asarray(generic_detector(np.random.default_rng(0))["ipc"])
    assert abs(kernel.sum() - 1) < 1e-15
    coupled = np.asarray(apply_ipc(charge, jnp.asarray(kernel)))
    np.testing.assert_allclose(coupled.sum(axis=(1, 2)), charge.sum(axis=(1, 2)), rtol=1e-9)
    assert coupled.max() < float(charge.max())  # charge moved off the peak
    halved = np.asarray(apply_ipc(charge, jnp.asarray(0.5 * kernel)))
    np.testing.assert_allclose(halved.sum(axis=(1, 2)), 0.5 * charge.sum(axis=(1, 2)), rtol=1e-9)


def test_ipc_is_the_zero_padded_convolution():
    """`apply_ipc` equals scipy's 2-D convolution (same size, zero fill) with an asymmetric
    kernel, on square and non-square frames."""
    rng = np.random.default_rng(4)
    kernel = rng.uniform(0.0, 0.1, (3, 3))
    for shape in [(2, 32, 32), (3, 40, 24)]:
        charge = rng.uniform(0.0, 1e4, shape)
        expected = np.stack([convolve2d(f, kernel, mode="same") for f in charge])
        got = np.asarray(apply_ipc(jnp.asarray(charge), jnp.asarray(kernel)))
        np.testing.assert_allclose(got, expected, rtol=1e-13, atol=1e-9)


IPC_POWER_OF_TWO = """
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
from model.detector import apply_ipc

def total(x, k):
    return jnp.sum(apply_ipc(jnp.sin(x), k))

for n in (16, 32, 64, 128):
    for b in (8, 64):
        args = jnp.ones((b, n, n)), jnp.full((3, 3), 0.1)
        jax.block_until_ready(jax.jit(total)(*args))
        jax.block_until_ready(jax.jit(jax.grad(total))(*args))
print("ok")
"""


def test_ipc_runs_at_power_of_two_widths():
    """Regression: a float64 3×3 convolution op at widths 16–128 read out of bounds on
    XLA:CPU (jax 0.10.2) and could segfault; run in a subprocess so a crash is a failure."""
    done = subprocess.run(
        [sys.executable, "-c", IPC_POWER_OF_TWO], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


# --- ramp ---------------------------------------------------------------------------------

GROUP_TIME = 0.07544
RATE = jnp.asarray(_gaussian(15, sigma=1.5, peak=4e5))  # e-/s: peak ≈ 1.5e5 e- after 5 groups


def test_zero_bfe_gives_linear_ramp():
    charge = accumulate(RATE, 5, GROUP_TIME, jnp.zeros(2))
    expected = RATE[None] * GROUP_TIME * jnp.arange(1, 6)[:, None, None]
    np.testing.assert_allclose(charge, expected, rtol=1e-13)
    identity = jnp.zeros((3, 3)).at[1, 1].set(1.0)
    signal = ramp_signal(RATE, 5, GROUP_TIME, jnp.zeros(2), identity, jnp.zeros(2))
    slopes = jnp.diff(signal, axis=0)
    np.testing.assert_allclose(slopes, np.broadcast_to(RATE * GROUP_TIME, slopes.shape), rtol=1e-12)


def test_brighter_fatter_moves_charge_but_conserves_it():
    """Charge leaves the bright core for its neighbours, more along x when bfe_x > bfe_y,
    more as the pixel fills; with the source centred nothing reaches the edge, so the
    total is conserved."""
    linear = np.asarray(accumulate(RATE, 5, GROUP_TIME, jnp.zeros(2)))
    fatter = np.asarray(accumulate(RATE, 5, GROUP_TIME, jnp.array([0.05, 0.02])))
    np.testing.assert_allclose(fatter.sum(axis=(1, 2)), linear.sum(axis=(1, 2)), rtol=1e-10)
    assert np.abs(fatter[1:] - linear[1:]).max() > 1e-3 * linear.max()  # it did move charge
    peak = (7, 7)
    assert np.all(fatter[1:, peak[0], peak[1]] < linear[1:, peak[0], peak[1]])
    _, _, var_linear = _moments(linear[-1])
    _, _, var_fatter = _moments(fatter[-1])
    growth = var_fatter - var_linear
    assert growth[0] > growth[1] > 0
    # The migration grows with the collected charge: the peak's slopes fall up the ramp.
    peak_slopes = np.diff(fatter[:, peak[0], peak[1]])
    assert np.all(np.diff(peak_slopes) < 0)


@pytest.mark.parametrize("sign", [-1.0, 1.0])
def test_nonlinearity_bends_the_ramp(sign):
    """S = Q(1 + c₁Q/1e4 + …): negative c₁ bends the ramp down (falling slopes), positive up."""
    charge = jnp.linspace(0.0, 8e4, 9)
    coeffs = jnp.array([sign * 0.03, 0.0])
    signal = np.asarray(nonlinearity(charge, coeffs))
    np.testing.assert_allclose(signal[0], 0.0)
    assert np.all(sign * (signal[1:] - charge[1:]) > 0)
    assert np.all(sign * np.diff(np.diff(signal)) > 0)
    np.testing.assert_allclose(nonlinearity(charge, jnp.zeros(2)), charge)
    identity = jnp.zeros((3, 3)).at[1, 1].set(1.0)
    slopes = np.diff(ramp_signal(RATE, 6, GROUP_TIME, jnp.zeros(2), identity, coeffs), axis=0)
    assert np.all(sign * np.diff(slopes[:, 7, 7]) > 0)
