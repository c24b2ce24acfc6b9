"""Campaign I/O: FITS exposures, JWST products, the Zarr campaign and results stores."""
