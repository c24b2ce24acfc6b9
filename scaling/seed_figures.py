"""Run the peer seed script and add the figures it leaves out (standalone: it runs in the
seed's own Python, which has dLux and zodiax but not this project).

    python seed_figures.py SCRIPT STEPS [x64]

Runs SCRIPT (`../shared/peers/flatfield_seed.py`) as `__main__` with STEPS and x64, then
prints one JSON line: the script's own figures plus, from its final globals,
`ff_mae_bright_scaled` (the fitted response scaled to the truth's mean over the bright
pixels first, as `scaling.report.flatfield` measures the project's: a response times c
and every flux over c give the same data) and `ff_mae_floor` (the Poisson limit
sqrt(2/π) mean_i 1/sqrt(N S_i) of N exposures of S_i counts on those pixels).
"""

import contextlib
import io
import json
import runpy
import sys

import numpy as np


def figures(script: str, steps: str, x64: bool) -> dict:
    sys.argv = [script, steps, *(["x64"] if x64 else [])]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        g = runpy.run_path(script, run_name="__main__")
    own = json.loads(printed.getvalue().strip().splitlines()[-1])
    data = np.asarray(g["data"])
    signal = data.mean(0)
    bright = signal >= g["thresh"]
    true = np.asarray(g["pix_response"])[bright]
    fitted = np.asarray(g["model"].get(g["flatfield"]))[bright]
    scaled = fitted * true.mean() / fitted.mean()
    floor = np.sqrt(2 / np.pi) * np.mean(1 / np.sqrt(len(data) * signal[bright]))
    return {
        **own,
        "ff_mae_bright_scaled": float(np.abs(scaled - true).mean()),
        "ff_mae_floor": float(floor),
    }


if __name__ == "__main__":
    print(json.dumps(figures(sys.argv[1], sys.argv[2], "x64" in sys.argv[3:])))
