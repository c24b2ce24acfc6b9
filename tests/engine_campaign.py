"""A tiny in-memory simulated campaign for engine tests (shapes chosen for speed)."""

import jax.numpy as jnp
import numpy as np

from model import ami_model, make_spec, nominal_detector
from model.noise import noisy_slopes
from scaling.partition import Observation, exposure_params, make_batches

NPIX, NIMG = 12, 9


def tiny_campaign(
    seed: int = 0, nepochs: int = 2, per_epoch: int = 2, ncal: int = 1, ngroups: int = 4
):
    """(model, true params, observations, exposure names, epoch names) with noisy data."""
    m = ami_model(
        npix=NPIX, oversample=2, pupil_npix=48, nwavels=2, n_hole_zernikes=1, filters=("F430M",)
    )
    rng = np.random.default_rng(seed)
    det = nominal_detector(NPIX)
    det["flat"] = jnp.asarray(1 + 0.02 * rng.standard_normal((NPIX, NPIX)))
    det["bfe"] = jnp.asarray([0.01, 0.01])
    det["nonlinearity"] = jnp.asarray([-0.01, 0.0])
    det["jitter"] = jnp.asarray(0.1)
    det["dark"] = jnp.asarray(1.0)
    aberrations = m.optics.pupil.canonical(jnp.asarray(20 * rng.standard_normal(7)))
    shared = {**det, "aberrations": {"F430M": aberrations}}
    epochs = [f"e{i}" for i in range(nepochs)]
    yy, xx = np.mgrid[:NIMG, :NIMG] - NIMG // 2
    images = np.stack(
        [-(xx**2 + yy**2) / 6.0 + 0.3 * rng.standard_normal((NIMG, NIMG)) for _ in epochs]
    )
    obs_meta = [(f"sci{e}{k}", ep) for e, ep in enumerate(epochs) for k in range(per_epoch)]
    obs_meta += [(f"cal{k}", None) for k in range(ncal)]
    names = [n for n, _ in obs_meta]
    X = len(names)
    exposure = {
        "position": jnp.asarray(0.02 * rng.standard_normal((X, 2))),
        "log_flux": jnp.asarray(4.5 + 0.1 * rng.standard_normal(X)),
        "spectral_slope": jnp.asarray(0.1 * rng.standard_normal(X)),
    }
    truth = {"shared": shared, "epoch": {"log_image": jnp.asarray(images)}, "exposure": exposure}
    observations = []
    specs = [make_spec("F430M", ngroups, roll=30.0 * i, nints=5) for i in range(len(obs_meta))]
    blank = [
        Observation(n, ep, s, np.zeros((ngroups - 1, NPIX, NPIX)), np.zeros((NPIX, NPIX), bool))
        for (n, ep), s in zip(obs_meta, specs, strict=True)
    ]
    for i, (name, ep) in enumerate(obs_meta):
        spec = specs[i]
        (batch,) = make_batches([blank[i]], names, epochs)
        p = exposure_params(truth, batch, i, epochs.index(ep) if ep else 0)
        mean = np.asarray(m.slopes(p, spec))
        data = noisy_slopes(rng, mean, 10.0, 5)
        bad = np.zeros((NPIX, NPIX), bool)
        bad[0, 0] = True
        observations.append(Observation(name, ep, spec, data, bad))
    return m, truth, observations, names, epochs
