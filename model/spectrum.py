"""Filter bandpasses sampled at discrete wavelengths, reweighted by a spectral slope."""

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from model.constants import FILTERS


class Bandpass(eqx.Module):
    """A filter sampled at `n` wavelengths across its band.

    Attributes:
        wavelengths: (nwavels,) sample wavelengths, metres (bin centres of a top-hat band).
        throughput: (nwavels,) relative throughput at those wavelengths, unit sum.
        centre: pivot wavelength, metres.
    """

    wavelengths: Float[Array, " nwavels"]
    throughput: Float[Array, " nwavels"]
    centre: float = eqx.field(static=True)

    def weights(self, slope: Float[Array, ""]) -> Float[Array, " nwavels"]:
        """Spectral weights, unit sum: throughput × (λ/λ_centre)^slope.

        A power law stays positive for any slope, so no clipping is needed.
        """
        w = self.throughput * (self.wavelengths / self.centre) ** slope
        return w / jnp.sum(w)


def bandpass(filter_name: str, nwavels: int = 5) -> Bandpass:
    """Top-hat bandpass of a published medium filter sampled at `nwavels` bin centres."""
    if filter_name not in FILTERS:
        raise ValueError(f"unknown filter {filter_name!r}; expected one of {sorted(FILTERS)}")
    if nwavels < 1:
        raise ValueError(f"nwavels must be >= 1, got {nwavels}")
    centre, width = FILTERS[filter_name]
    edges = np.linspace(centre - width / 2, centre + width / 2, nwavels + 1)
    wavelengths = 0.5 * (edges[1:] + edges[:-1])
    throughput = np.full(nwavels, 1.0 / nwavels)
    return Bandpass(jnp.asarray(wavelengths), jnp.asarray(throughput), float(centre))
