"""Published JWST/NIRISS AMI numbers used as defaults by the physics."""

import numpy as np

PRIMARY_DIAMETER = 6.603464
"""JWST primary diameter used for the pupil grid, metres."""

HOLE_CENTRES = np.array(
    [
        [0.0, -2.64],
        [-2.28631, 0.0],
        [2.28631, -1.32],
        [-2.28631, 1.32],
        [-1.143155, 1.98],
        [2.28631, 1.32],
        [1.143155, 1.98],
    ]
)
"""NIRISS non-redundant mask hole centres projected on the primary, (7, 2) metres (x, y)."""

HOLE_FLAT_TO_FLAT = 0.80
"""Flat-to-flat width of each hexagonal hole projected on the primary, metres."""

PIXEL_SCALE = 0.0656
"""NIRISS detector pixel scale, arcsec per pixel."""

SUB80_NPIX = 80
"""Side of the SUB80 subarray used by AMI, pixels."""

FRAME_TIME = 0.07544
"""SUB80 frame (and NISRAPID group) time, seconds."""

NM = 1e-9
"""One nanometre in metres (aberration coefficients are in nm, OPDs in metres)."""

FILTERS = {
    "F380M": (3.83e-6, 0.21e-6),
    "F430M": (4.29e-6, 0.20e-6),
    "F480M": (4.82e-6, 0.30e-6),
}
"""Medium-band filters: (pivot wavelength, bandwidth), metres."""

ARCSEC = np.pi / (180.0 * 3600.0)
"""One arcsecond in radians."""

IO_ROTATION_PERIOD_H = 42.46
"""Io's synchronous rotation period, hours."""
