"""`scaling flatbench`'s seed harness (`scaling/seed_figures.py`) on a stand-in for the
peer script: the figures it adds from the script's globals."""

import sys
import textwrap

import numpy as np
import pytest

from scaling.flatbench import run_seed

STAND_IN = """
import json, sys
import numpy as np

class Model:
    def __init__(self, flat):
        self.flat = flat

    def get(self, name):
        return self.flat

rng = np.random.default_rng(1)
pix_response = 1 + 0.05 * rng.normal(size=(16, 16))
data = rng.uniform(1000, 9000, size=(4, 16, 16))
thresh = 2500
flatfield = "ApplyPixelResponse.pixel_response"
model = Model(1.01 * pix_response + 0.002)
print("compiling")
print(json.dumps(dict(steps=int(sys.argv[1]), x64=len(sys.argv) > 2, ff_mae_bright=0.5)))
"""


def test_seed_harness_adds_the_scaled_error_and_the_noise_floor(tmp_path):
    script = tmp_path / "peer.py"
    script.write_text(textwrap.dedent(STAND_IN))
    out = run_seed(sys.executable, str(script), 7, x64=True)
    assert out["steps"] == 7 and out["x64"] and out["ff_mae_bright"] == 0.5
    rng = np.random.default_rng(1)
    true = 1 + 0.05 * rng.normal(size=(16, 16))
    data = rng.uniform(1000, 9000, size=(4, 16, 16))
    signal = data.mean(0)
    bright = signal >= 2500
    fitted = (1.01 * true + 0.002)[bright]
    scaled = fitted * true[bright].mean() / fitted.mean()
    expected = np.abs(scaled - true[bright]).mean()
    assert out["ff_mae_bright_scaled"] == pytest.approx(expected, rel=1e-12)
    floor = np.sqrt(2 / np.pi) * np.mean(1 / np.sqrt(4 * signal[bright]))
    assert out["ff_mae_floor"] == pytest.approx(floor, rel=1e-12)


def test_a_failing_seed_script_names_itself(tmp_path):
    script = tmp_path / "broken.py"
    script.write_text("raise SystemExit('no dLux here')\n")
    with pytest.raises(RuntimeError, match=r"broken\.py failed"):
        run_seed(sys.executable, str(script), 1, x64=False)
