"""Configs: every shipped file parses; errors name the file and the dotted key; CLI codes."""

import dataclasses
from pathlib import Path

import pytest

from model.constants import IO_ROTATION_PERIOD_H
from scaling.cli import EXIT_USAGE, main
from scaling.config import (
    CampaignConfig,
    ConfigError,
    FitConfig,
    FlatFieldConfig,
    StarFieldFitConfig,
    SweepConfig,
    config_to_dict,
    load_config,
    parse_config,
)
from scaling.config.load import override
from scaling.data.ingest import DEFAULT_WINDOW_HOURS

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "path", sorted(CONFIGS.rglob("*.toml")), ids=lambda p: str(p.relative_to(CONFIGS))
)
def test_every_shipped_config_parses(path):
    config = load_config(path)
    if path.stem.startswith("flatfield") and path.stem.endswith("_fit"):
        expected = StarFieldFitConfig
    elif path.stem.endswith("_fit"):
        expected = FitConfig
    elif "sweep" in path.stem:
        expected = SweepConfig
        base = load_config(config.fit)
        for key, domain in config.space.items():
            override(base, {key: next(iter(domain.values()))[0]}, str(path))
    elif path.name.startswith("flatfield"):
        expected = FlatFieldConfig
    else:
        expected = CampaignConfig
    assert isinstance(config, expected)
    assert parse_config(config_to_dict(config)) == config


def test_shipped_configs_exist():
    names = {p.name for p in CONFIGS.glob("*.toml")}
    assert {"io_demo.toml", "io_test.toml", "flatfield_demo.toml", "flatfield_test.toml"} <= names
    assert {"io_demo_fit.toml", "io_test_fit.toml"} <= names


@pytest.mark.parametrize(
    "name, exposures", [("io_campaign.toml", 102), ("io_campaign_large.toml", 412)]
)
def test_the_large_campaigns_span_two_rotations(name, exposures):
    """Issue 13: Io over two rotations, at least 24 epochs × 4 exposures in F430M on
    SUB80 and calibrators at several times; the large variant at least 400 exposures.
    Epochs lie further apart than the ingest's epoch window, which would merge them."""
    config = load_config(CONFIGS / name)
    ep, cal = config.epochs, config.calibrators
    assert config.filters == ("F430M",) and config.instrument.npix == 80
    assert (ep.count - 1) * ep.spacing_hours >= 2 * IO_ROTATION_PERIOD_H
    assert ep.count >= 24 and ep.exposures >= 4 and cal.count >= 6
    assert ep.spacing_hours > DEFAULT_WINDOW_HOURS
    assert ep.count * ep.exposures + cal.count == exposures


def test_minimal_files_take_the_defaults(tmp_path):
    assert load_config(write(tmp_path, "")) == CampaignConfig()
    assert load_config(write(tmp_path, 'kind = "io"\n')) == CampaignConfig()
    assert load_config(write(tmp_path, 'kind = "flatfield"\n')) == FlatFieldConfig()


def test_values_are_typed(tmp_path):
    config = load_config(
        write(tmp_path, "seed = 3\nfilters = ['F380M', 'F480M']\n[io]\ndiameter = 1\n")
    )
    assert config.filters == ("F380M", "F480M")
    assert config.io.diameter == 1.0 and isinstance(config.io.diameter, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ("[epochs]\ncout = 3\n", "epochs.cout", ["unknown key", "count"]),
        ("colour = 'red'\n", "colour", ["unknown key"]),
        ("[instrument]\nnpix = '80'\n", "instrument.npix", ["expected an integer", "'80'"]),
        ("[instrument]\nnpix = true\n", "instrument.npix", ["expected an integer"]),
        ("[instrument]\nnpix = 8.5\n", "instrument.npix", ["expected an integer"]),
        ("[io]\nimage_npix = 66\n", "io.image_npix", ["odd"]),
        ("[instrument]\npsf_pad = -1\n", "instrument.psf_pad", [">= 0"]),
        ("[instrument]\npsf_pad = 2\n", "instrument.psf_pad", ["at least 3", "pointing"]),
        ("[io]\ndiameter = 3.0\n", "io.diameter", ["at most the image side"]),
        ("[[io.volcanoes]]\nname = 'Loki'\n", "io.volcanoes[0].latitude", ["missing"]),
        (
            "[[io.volcanoes]]\nname = 'X'\nlatitude = 95\nlongitude = 0\nbrightness = 1\n",
            "io.volcanoes[0].latitude",
            ["[-90, 90]"],
        ),
        ("filters = ['F999W']\n", "filters[0]", ["one of"]),
        ("filters = 'F430M'\n", "filters", ["a list of"]),
        ("[truth]\nbfe = [0.1]\n", "truth.bfe", ["a list of 2"]),
        ("[truth]\nread_noise = -1\n", "truth.read_noise", ["> 0"]),
        ("epochs = 3\n", "epochs", ["a table"]),
        ("kind = 'galaxy'\n", "kind", ["'flatfield'", "'io'"]),
        ("kind = 'flatfield'\ndithers = [[0, 0], [1]]\n", "dithers[1]", ["a list of 2"]),
        ("kind = 'flatfield'\n[stars]\nn_stars = 0\n", "stars.n_stars", [">= 1"]),
        ("kind = 'fit'\n[binary]\nsep = 90\n", "binary.sep", ["unknown key", "separation"]),
        ("kind = 'fit'\n[binary]\nseparation = -5\n", "binary.separation", [">= 0"]),
        ("kind = 'fit'\n[binary]\ncontrast = -1\n", "binary.contrast", [">= 0"]),
        ("kind = 'fit'\n[binary]\nposition_angle = 360\n", "binary.position_angle", ["[0, 360)"]),
        ("kind = 'fit'\n[binary]\nseparation = '90'\n", "binary.separation", ["a number"]),
        ("kind = 'fit'\n[select]\ntarget = ['X']\n", "select.target", ["unknown key", "targets"]),
        ("kind = 'fit'\n[select]\nfilters = ['F999W']\n", "select.filters[0]", ["one of"]),
        ("kind = 'fit'\n[select]\nfilters = 'F430M'\n", "select.filters", ["a list of"]),
        ("kind = 'fit'\n[select]\nobservations = [12, 0]\n", "select.observations[1]", [">= 1"]),
        ("kind = 'fit'\n[select]\nobservations = ['12']\n", "select.observations[0]", ["integer"]),
        ("kind = 'fit'\n[select]\ntargets = ['']\n", "select.targets[0]", ["non-empty"]),
        ("kind = 'fit'\ncalibration = 3\n", "calibration", ["a string"]),
        ("kind = 'fit'\nposition_start = 'middle'\n", "position_start", ["'centroid'"]),
        ("kind = 'fit'\n[quasi_newton]\ntolerance = -1\n", "quasi_newton.tolerance", [">= 0"]),
        ("kind = 'fit'\n[cluster]\ntransport = 'dag'\n", "cluster.transport", ["'graph'"]),
    ],
)
def test_errors_name_the_file_and_key(tmp_path, text, key, words):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    message = str(info.value)
    assert message.startswith(f"{path}: {key}: ")
    for word in words:
        assert word in message


def test_invalid_toml_names_the_file(tmp_path):
    path = write(tmp_path, "seed = = 1\n")
    with pytest.raises(ValueError, match=r"config\.toml: invalid TOML"):
        load_config(path)


def test_echo_round_trips():
    for name in ("io_demo.toml", "flatfield_demo.toml"):
        config = load_config(CONFIGS / name)
        assert parse_config(config_to_dict(config)) == config


def test_cli_bad_config_exits_2(tmp_path, capsys):
    path = write(tmp_path, "[epochs]\ncout = 3\n")
    assert main(["simulate", str(path), "--out", str(tmp_path / "out")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert "epochs.cout" in err and str(path) in err
    assert not (tmp_path / "out").exists()


def test_cli_missing_config_exits_2(tmp_path, capsys):
    absent = tmp_path / "absent.toml"
    assert main(["simulate", str(absent), "--out", str(tmp_path / "out")]) == EXIT_USAGE
    assert "absent.toml" in capsys.readouterr().err


def test_cli_refuses_to_replace_a_foreign_folder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    args = ["simulate", str(CONFIGS / "flatfield_test.toml"), "--out", str(out), "--quiet"]
    assert main(args) == EXIT_USAGE
    assert "holds no truth.json; not replacing it" in capsys.readouterr().err
    assert (out / "precious.txt").read_text() == "keep me"


def test_cli_usage_error_exits_2():
    with pytest.raises(SystemExit) as info:
        main(["simulate"])
    assert info.value.code == EXIT_USAGE


def test_cli_simulate_succeeds(tmp_path, capsys):
    out = tmp_path / "campaign"
    args = ["simulate", str(CONFIGS / "flatfield_test.toml"), "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert len(list(out.glob("*_calslope.fits"))) == 2
    assert (out / "truth.json").exists() and (out / "truth.npz").exists()
    assert str(out) in capsys.readouterr().out
