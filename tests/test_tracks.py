"""Volcano tracks: the surface inversion of the sky projection, the fitted rotation
period, and the picture, on true images of a rotating Io (a small campaign's worth)."""

import jax.numpy as jnp
import numpy as np
import pytest

from model.constants import IO_ROTATION_PERIOD_H
from model.scenes import IoScene, spot_geometry
from scaling.report.tracks import hour_angle, rotation_period, volcano_tracks, write_tracks_png

VOLCANOES = [
    {"name": "Loki", "latitude": 13.0, "longitude": 309.0, "brightness": 0.08},
    {"name": "Pele", "latitude": -19.0, "longitude": 255.0, "brightness": 0.05},
]
DIAMETER, SCALE, N = 1.1, 0.0219, 67


@pytest.mark.parametrize("sub_latitude", [0.0, 3.0])
def test_hour_angle_inverts_the_projection(sub_latitude):
    lat = np.array([13.0, -19.0, 40.0, 0.0])
    lon = np.array([309.0, 255.0, 100.0, 20.0])
    sub = 280.0
    xy, mu = spot_geometry(jnp.asarray(lat), jnp.asarray(lon), sub, sub_latitude, DIAMETER)
    near = np.asarray(mu) > 0
    angle = hour_angle(np.asarray(xy), sub_latitude, DIAMETER)
    expected = (sub - lon + 180) % 360 - 180
    np.testing.assert_allclose(angle[near], expected[near], atol=1e-9)


def test_rotation_period_from_wrapped_hour_angles():
    hours = np.linspace(0, 85, 40)
    angles = (30 + 360 * hours / 41.7 + 180) % 360 - 180
    seen = np.abs(angles) < 70
    assert rotation_period(hours[seen], angles[seen], IO_ROTATION_PERIOD_H) == pytest.approx(
        41.7, rel=1e-4
    )
    assert np.isnan(rotation_period(hours[:2], angles[:2], IO_ROTATION_PERIOD_H))


@pytest.fixture(scope="module")
def campaign():
    """True images and truth records of 16 epochs over two rotations."""
    scene = IoScene(
        jnp.asarray([v["latitude"] for v in VOLCANOES]),
        jnp.asarray([v["longitude"] for v in VOLCANOES]),
        jnp.asarray([v["brightness"] for v in VOLCANOES]),
        DIAMETER,
        0.3,
        60000.0,
        300.0,
    )
    mjds = 60000.0 + np.arange(16) * 5.3 / 24
    spots = [scene.spots(jnp.asarray(m)) for m in mjds]
    meta = {
        "config": {"io": {"volcanoes": VOLCANOES, "sub_latitude": 0.0, "diameter": DIAMETER}},
        "epochs": [{"mjd": m, "sub_longitude": float(scene.sub_longitude(m))} for m in mjds],
    }
    arrays = {
        "spot_xy": np.stack([np.asarray(xy) for xy, _ in spots]),
        "spot_visibility": np.stack([np.asarray(v) for _, v in spots]),
    }
    images = np.stack([np.asarray(scene.image(jnp.asarray(m), N, SCALE)) for m in mjds])
    return images, meta, arrays


def test_tracks_of_true_images_give_longitudes_and_period(campaign, tmp_path):
    images, meta, arrays = campaign
    tracks = volcano_tracks(images, SCALE, meta, arrays, arrays["spot_xy"])
    assert [t.name for t in tracks] == ["Loki", "Pele"]
    for t in tracks:
        assert len(t.hours) >= 5
        error = (t.fitted_longitude - t.true_longitude + 180) % 360 - 180
        assert np.max(np.abs(error)) < 6.0
        period = rotation_period(t.hours, t.fitted_hour_angle, IO_ROTATION_PERIOD_H)
        assert period == pytest.approx(IO_ROTATION_PERIOD_H, rel=0.02)
    path = write_tracks_png(tmp_path / "tracks.png", tracks, IO_ROTATION_PERIOD_H)
    assert path.stat().st_size > 0


def test_tracks_follow_the_truth_into_the_fits_frame(campaign):
    """Images rolled by 3 pixels: off against the unmoved truth, on against the truth
    moved by the same 3 pixels."""
    images, meta, arrays = campaign
    rolled = np.roll(images, 3, axis=-1)

    def worst(spot_xy):
        tracks = volcano_tracks(rolled, SCALE, meta, arrays, spot_xy)
        return max(
            np.max(np.abs((t.fitted_longitude - t.true_longitude + 180) % 360 - 180))
            for t in tracks
        )

    assert worst(arrays["spot_xy"]) > 6.0
    assert worst(arrays["spot_xy"] + np.array([3 * SCALE, 0.0])) < 6.0
