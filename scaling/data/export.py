"""Epoch images of a results store as FITS files with a celestial WCS.

The WCS is a gnomonic (TAN) projection about the image centre with a CD matrix from the
pixel scale and the orientation (see `EpochImage`): for orientation θ, north lies θ
counter-clockwise from the +y axis and east 90° further, so θ = 0 is north up, east left.

The reference sky position is the image's `ra`/`dec` (from the target's TARG_RA/TARG_DEC
header keywords or the config). Without one, RA = Dec = 0 is written as a placeholder and
the header says so (RADECSRC = 'PLACEHOLDER'): the scale and orientation are still right,
the absolute position is not.
"""

import argparse
import math
import os
import re
import tempfile
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from scaling.data._zarr import Location
from scaling.data.results import EpochImage, Results


def cd_matrix(pixel_scale: float, orientation: float) -> np.ndarray:
    """(2, 2) CD matrix, degrees per pixel, of square `pixel_scale`-arcsec pixels with north
    `orientation` degrees counter-clockwise from +y and east 90° further (0: north up, east
    left); for an exposure's detector axes the orientation is the model's roll."""
    scale = pixel_scale / 3600.0
    c, s = math.cos(math.radians(orientation)), math.sin(math.radians(orientation))
    return np.array([[-scale * c, -scale * s], [-scale * s, scale * c]])


def celestial_wcs(image: EpochImage) -> WCS:
    """RA---TAN/DEC--TAN WCS of `image`, reference pixel at its centre."""
    ny, nx = np.shape(image.data)
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crpix = [(nx + 1) / 2, (ny + 1) / 2]
    known = image.ra is not None and image.dec is not None
    wcs.wcs.crval = [image.ra, image.dec] if known else [0.0, 0.0]
    wcs.wcs.cd = cd_matrix(image.pixel_scale, image.orientation)
    wcs.wcs.radesys = "ICRS"
    if image.mjd is not None:
        wcs.wcs.mjdobs = image.mjd
    return wcs


def image_hdu(image: EpochImage) -> fits.PrimaryHDU:
    """`image` as a FITS primary HDU: data, WCS and what the image is."""
    header = celestial_wcs(image).to_header()
    known = image.ra is not None and image.dec is not None
    header["RADECSRC"] = ("TARGET" if known else "PLACEHOLDER", "source of CRVAL1/CRVAL2")
    header["EPOCH_ID"] = (image.name, "epoch name")
    header["TARGPROP"] = (image.target, "target name")
    header["PIXSCALE"] = (image.pixel_scale, "[arcsec] pixel scale")
    header["NORTHANG"] = (image.orientation, "[deg] CCW angle from +y axis to north")
    if image.unit:
        header["BUNIT"] = image.unit
    return fits.PrimaryHDU(np.asarray(image.data, dtype=np.float64), header=header)


def export_fits(results: Location, folder: str | os.PathLike) -> list[Path]:
    """Write every epoch image of the latest save in `results` to `folder`/EPOCH.fits
    (each file written aside, then renamed); returns the files."""
    images = Results.open(results).load().images
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for image in images:
        path = folder / f"{re.sub(r'[^A-Za-z0-9_.+-]', '_', image.name)}.fits"
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                image_hdu(image).writeto(f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        written.append(path)
    return written


def add_export_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `scaling export RESULTS --fits DIR`."""
    summary = "write each epoch image of a results store as FITS with a celestial WCS"
    p = subparsers.add_parser("export", help=summary, description=summary)
    p.add_argument("results", metavar="RESULTS", help="results store: path or fsspec URL")
    p.add_argument("--fits", required=True, metavar="DIR", help="folder for EPOCH.fits files")
    p.set_defaults(handler=export_command)


def export_command(args: argparse.Namespace) -> int:
    """Run `scaling export`; returns 0 (bad input raises: `scaling.cli.main` reports it)."""
    files = export_fits(args.results, args.fits)
    print(f"{len(files)} epoch images written to {args.fits}")
    return 0
