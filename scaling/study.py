"""`scaling study jw01093`: the real-data study of JWST program 1093, end to end.

    scaling study jw01093 --data ../shared/data/jw01093 --out out/jw01093

1. The program's `_cal` files are ingested into OUT/campaign.zarr.
2. (A) Does a calibration carry over between real stars? HD 37093's instrument
   calibration (configs/jw01093/hd37093_fit.toml), then HD 36805 fitted with it held
   fixed ("carried"), with its own calibration ("own") and with nominal optics
   ("nominal"); HD 36805's reduced χ² per filter in the three cases. The criterion:
   in every filter the carried χ² is closer to the own one than to the nominal one, in
   ratio (χ²_carried / χ²_own < χ²_nominal / χ²_carried).
3. (B) AB Dor as a binary: the calibration of both calibrators together
   (calibrators_fit.toml, started from HD 37093's); then for observations 012 and 013
   separately a single-star fit, a χ² grid of companion offsets about it
   (`scaling.fitting.companion`), the binary fit (abdor_012_fit.toml, abdor_013_fit.toml)
   from the grid's best point and again from a second guess, Fisher errors
   (`scaling.fitting.uncertainty.fisher_errors`, marginalised over positions and
   fluxes), and each filter fitted alone (its own separation and position angle). The
   same grid on HD 36805 (with the carried calibration) is the control: how deep a χ²
   dip the residual systematics alone make, anywhere and where AB Dor's companion is.
   The criterion: the two observations agree within 3σ, or, where the systematics
   exceed the formal errors, within 4% in separation, 1.5° in position angle and
   0.2 mag in contrast.
4. OUT/study.json and OUT/study.md hold the tables; the Markdown is printed too.

Each fit is a `scaling fit` of a shipped config with its stores moved under OUT: the
campaign to OUT/campaign.zarr, results and calibrations to OUT/<their file names>; its
MLflow run goes to OUT/mlflow.db.
"""

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scaling.config import BinaryConfig, FitConfig, TrackingConfig, load_config
from scaling.data.ingest import ingest
from scaling.fit import fit_campaign
from scaling.fitting.companion import CompanionGrid, companion_grid
from scaling.fitting.objective import chi_squared_by_exposure
from scaling.fitting.params import make_batches
from scaling.fitting.start import load_observations, open_selection
from scaling.fitting.uncertainty import fisher_errors

GRID_INSTRUMENT = {"oversample": 2, "pupil_npix": 128}
"""The companion grid's model: the fits' sizes but these (3.6× faster on 2 CPU cores);
the parameters are the same, and the gradient fits that follow use the full model."""

SECOND_GUESS = {"separation": 0.85, "position_angle": 20.0, "contrast": -0.7}
"""The second start of each binary fit: the grid's separation × 0.85, its position
angle + 20°, its contrast − 0.7 mag."""

BINARY = ("separation", "position_angle", "contrast")
ERROR_NAMES = (*BINARY, "position", "log_flux")
"""The parameters of a binary fit's Fisher errors (each σ marginalised over the rest)."""

TOLERANCE = {"separation": 0.04, "position_angle": 1.5, "contrast": 0.2}
"""How far the two AB Dor observations may differ where systematics exceed the formal
errors: 4% in separation (relative), 1.5° in position angle, 0.2 mag in contrast."""

OBSERVATIONS = (12, 13)
"""AB Dor's observations, fitted separately."""

NEAR = 50.0
"""Grid points within this sky distance (mas) of another are "the same place"."""


@dataclass
class Fitted:
    """A fit done by the study: its config, record (for the tables) and what the
    follow-up steps need (parameters, model, observations, batches)."""

    config: FitConfig
    record: dict
    params: dict
    model: object
    observations: list
    batches: list


class Study:
    """The jw01093 study (see the module docstring)."""

    def __init__(self, data: Path, out: Path, configs: Path, progress: bool = True):
        self.data, self.out, self.configs, self.progress = data, out, configs, progress
        self.campaign = out / "campaign.zarr"

    def log(self, text: str) -> None:
        if self.progress:
            print(text, flush=True)

    # --- fits ------------------------------------------------------------------------

    def config(self, name: str) -> FitConfig:
        """The shipped config NAME_fit.toml with its stores under the study's folder."""
        config = load_config(self.configs / f"{name}_fit.toml")
        if not isinstance(config, FitConfig):
            raise ValueError(f"{self.configs / name}_fit.toml: kind: expected 'fit'")
        calibration = str(self.out / Path(config.calibration).name) if config.calibration else ""
        return dataclasses.replace(
            config,
            campaign=str(self.campaign),
            results=str(self.out / Path(config.results).name),
            calibration=calibration,
            tracking=TrackingConfig(f"sqlite:///{(self.out / 'mlflow.db').resolve()}", name),
        )

    def fit(self, name: str, config: FitConfig) -> Fitted:
        """Run `config`; its reduced χ² overall and per filter."""
        began = time.perf_counter()
        outcome = fit_campaign(config, progress=False)
        campaign = open_selection(config)
        names = list(campaign.names)
        observations = load_observations(campaign, names)
        filters = sorted({o.spec.filter for o in observations})
        model = config.instrument.build(filters)
        batches = make_batches(observations, names, sorted(campaign.epochs))
        rows = chi_squared_by_exposure(model, outcome.params, batches)
        per_filter = {}
        for f in filters:
            chi2 = sum(rows[i][0] for i, o in enumerate(observations) if o.spec.filter == f)
            count = sum(rows[i][1] for i, o in enumerate(observations) if o.spec.filter == f)
            per_filter[f] = {"chi2": chi2, "count": count, "reduced_chi2": chi2 / count}
        record = {
            "config": name,
            "results": config.results,
            "exposures": names,
            "reduced_chi2": outcome.reduced_chi2,
            "filters": per_filter,
            "lbfgs_iterations": len(outcome.history.get("lbfgs_total", [])),
            "seconds": time.perf_counter() - began,
        }
        shown = ", ".join(f"{f} {v['reduced_chi2']:.2f}" for f, v in per_filter.items())
        self.log(
            f"fit       {name}: {len(names)} exposures, reduced chi2 {outcome.reduced_chi2:.3f}"
            f" ({shown})  ({record['seconds']:.0f} s)"
        )
        return Fitted(config, record, outcome.params, model, observations, batches)

    # --- the parts -------------------------------------------------------------------

    def ingest(self) -> dict:
        files = sorted(str(p) for p in self.data.glob("*_cal.fits"))
        if not files:
            raise ValueError(f"{self.data}: no *_cal.fits files (the program 1093 data)")
        self.out.mkdir(parents=True, exist_ok=True)
        result = ingest(files, self.campaign, progress=False)
        self.log(f"ingest    {len(files)} files into {self.campaign} ({len(result.added)} new)")
        return {"files": len(files), "store": str(self.campaign)}

    def carry_over(self) -> dict:
        """(A): HD 37093's calibration, then HD 36805 carried, own and nominal."""
        names = ("hd37093", "hd36805_carried", "hd36805_own", "hd36805_nominal")
        fits = {name: self.fit(name, self.config(name)) for name in names}
        rows = {}
        for f in sorted(fits["hd36805_own"].record["filters"]):
            chi2 = {
                case: fits[f"hd36805_{case}"].record["filters"][f]["reduced_chi2"]
                for case in ("carried", "own", "nominal")
            }
            carried_to_own = chi2["carried"] / chi2["own"]
            nominal_to_carried = chi2["nominal"] / chi2["carried"]
            rows[f] = {
                **chi2,
                "carried_over_own": carried_to_own,
                "nominal_over_own": chi2["nominal"] / chi2["own"],
                "nominal_over_carried": nominal_to_carried,
                "passes": bool(carried_to_own < nominal_to_carried),
            }
        self.carried_fit = fits["hd36805_carried"]
        return {
            "fits": {k: v.record for k, v in fits.items()},
            "filters": rows,
            "passes": all(r["passes"] for r in rows.values()),
        }

    def binary(self) -> dict:
        """(B): the calibrators' calibration, then each AB Dor observation alone."""
        calibration = self.fit("calibrators", self.config("calibrators"))
        observations = {f"{n:03d}": self.observation(n) for n in OBSERVATIONS}
        found = [(o["fit"]["values"]["separation"], o["fit"]["values"]["position_angle"])
                 for o in observations.values()]  # fmt: skip
        control = self.control(found)
        a, b = (observations[f"{n:03d}"] for n in OBSERVATIONS)
        agreement = compare(a["fit"], b["fit"])
        by_filter = {}
        for f in a["by_filter"]:
            rows = compare(a["by_filter"][f], b["by_filter"][f])
            by_filter.update({f"{f} {k.split()[0]}": v for k, v in rows.items()})
        return {
            "calibration": calibration.record,
            "observations": observations,
            "control": control,
            "agreement": agreement,
            "passes": all(row["verdict"] != "disagree" for row in agreement.values()),
            "agreement_by_filter": by_filter,
            "passes_by_filter": all(row["verdict"] != "disagree" for row in by_filter.values()),
        }

    def observation(self, number: int) -> dict:
        """Single star, companion grid, binary fits from two starts, Fisher errors."""
        name = f"abdor_{number:03d}"
        base = self.config(name)
        kept = ("position", "log_flux")
        single = dataclasses.replace(
            base,
            results=str(self.out / f"{name}_single.zarr"),
            binary=BinaryConfig(),
            optimisers={k: v for k, v in base.optimisers.items() if k in kept},
            quasi_newton=dataclasses.replace(base.quasi_newton, parameters=kept),
        )
        star = self.fit(f"{name}_single", single)
        grid, grid_record = self.grid(star, f"AB Dor {number:03d}")
        best = grid.best
        starts = {
            "grid": (
                float(grid.separation[best]),
                float(grid.position_angle[best]),
                float(np.median(grid.contrast[best])),
            )
        }
        sep, angle, contrast = starts["grid"]
        starts["second guess"] = (
            sep * SECOND_GUESS["separation"],
            (angle + SECOND_GUESS["position_angle"]) % 360.0,
            max(contrast + SECOND_GUESS["contrast"], 0.0),
        )
        fits = {}
        for label, start in starts.items():
            results = base.results if label == "grid" else f"{base.results[:-5]}_second.zarr"
            config = dataclasses.replace(base, results=results, binary=BinaryConfig(*start))
            fits[label] = self.fit(f"{name} from {label}", config)
        first = fits["grid"]
        began = time.perf_counter()
        errors = fisher_errors(first.model, first.params, first.batches, ERROR_NAMES)
        values = {label: binary_values(f.params) for label, f in fits.items()}
        sigma = binary_values({"shared": errors})
        self.log(f"errors    {name}: Fisher errors ({time.perf_counter() - began:.0f} s)")
        result = {
            "values": values["grid"],
            "sigma": sigma,
            "reduced_chi2": first.record["reduced_chi2"],
            "filters": first.record["filters"],
        }
        starts_agree = {
            k: float(np.max(np.abs(np.subtract(values["grid"][k], values["second guess"][k]))))
            for k in ("separation", "position_angle")
        }
        starts_agree["contrast"] = max(
            abs(values["grid"]["contrast"][f] - values["second guess"]["contrast"][f])
            for f in values["grid"]["contrast"]
        )
        by_filter = {}
        for f, contrast in values["grid"]["contrast"].items():
            start = (values["grid"]["separation"], values["grid"]["position_angle"], contrast)
            config = dataclasses.replace(
                base,
                results=f"{base.results[:-5]}_{f}.zarr",
                select=dataclasses.replace(base.select, filters=(f,)),
                binary=BinaryConfig(*start),
            )
            alone = self.fit(f"{name} {f} alone", config)
            sigma_f = fisher_errors(alone.model, alone.params, alone.batches, ERROR_NAMES)
            by_filter[f] = {
                "values": binary_values(alone.params),
                "sigma": binary_values({"shared": sigma_f}),
                "reduced_chi2": alone.record["reduced_chi2"],
                "record": alone.record,
            }
        self.log(
            f"binary    {name}: separation {result['values']['separation']:.2f} ± "
            f"{sigma['separation']:.2f} mas, PA {result['values']['position_angle']:.2f} ± "
            f"{sigma['position_angle']:.2f}°, contrast "
            + ", ".join(
                f"{f} {v:.3f} ± {sigma['contrast'][f]:.3f}"
                for f, v in result["values"]["contrast"].items()
            )
        )
        return {
            "single": star.record,
            "grid": grid_record,
            "starts": {k: dict(zip(BINARY, v, strict=True)) for k, v in starts.items()},
            "fits": {k: f.record for k, f in fits.items()},
            "second_guess_values": values["second guess"],
            "starts_differ_by": starts_agree,
            "fit": result,
            "by_filter": by_filter,
        }

    def grid(self, star: Fitted, label: str) -> tuple[CompanionGrid, dict]:
        """The companion grid about a single-star fit, on the coarser grid model."""
        began = time.perf_counter()
        instrument = dataclasses.replace(star.config.instrument, **GRID_INSTRUMENT)
        model = instrument.build(sorted(star.model.bandpasses))
        grid = companion_grid(model, star.params, star.observations)
        best = grid.best
        chi2_red = star.record["reduced_chi2"]
        offsets = grid.sky_offsets()
        own = grid.exposure_bests()
        record = {
            "points": len(grid.chi2),
            "per_exposure": [
                {
                    "exposure": o.name,
                    "filter": o.spec.filter,
                    "separation": float(grid.separation[k]),
                    "position_angle": float(grid.position_angle[k]),
                    "delta_chi2": float(grid.exposure_single[i] - grid.exposure_chi2[k, i]),
                }
                for i, (o, k) in enumerate(zip(star.observations, own, strict=True))
            ],
            "exposures_agreeing": int(
                sum(np.linalg.norm(offsets[k] - offsets[best]) <= NEAR for k in own)
            ),
            "separation": float(grid.separation[best]),
            "position_angle": float(grid.position_angle[best]),
            "contrast": grid.contrast_by_filter(),
            "delta_chi2": grid.improvement(),
            "delta_chi2_over_reduced_chi2": grid.improvement() / chi2_red,
            "median_delta_chi2_over_reduced_chi2": float(
                np.median(grid.chi2_single - grid.chi2) / chi2_red
            ),
            "exposures": len(star.observations),
            "model": {**dataclasses.asdict(instrument)},
            "seconds": time.perf_counter() - began,
        }
        self.log(
            f"grid      {label}: {record['points']} points, best at "
            f"{record['separation']:.0f} mas, PA {record['position_angle']:.0f}°, "
            f"Δχ² {record['delta_chi2']:.0f} (÷ reduced χ² "
            f"{record['delta_chi2_over_reduced_chi2']:.0f}); "
            f"{record['exposures_agreeing']}/{record['exposures']} exposures alone have their "
            f"best within {NEAR:.0f} mas of it  ({record['seconds']:.0f} s)"
        )
        return grid, record

    def control(self, found: list[tuple[float, float]]) -> dict:
        """The companion grid on a calibrator (HD 36805, its carried-calibration fit):
        how deep a χ² dip the systematics alone make, anywhere and at each (separation,
        position angle) in `found` (AB Dor's companion; the rolls are within 0.6°, so the
        same detector offset)."""
        grid, record = self.grid(self.carried_fit, "HD 36805 (control)")
        points = [grid.nearest(sep, angle) for sep, angle in found]
        deltas = grid.chi2_single - grid.chi2
        record["at_found"] = [
            {
                "separation": float(grid.separation[k]),
                "position_angle": float(grid.position_angle[k]),
                "delta_chi2": float(deltas[k]),
                "delta_chi2_over_reduced_chi2": float(
                    deltas[k] / self.carried_fit.record["reduced_chi2"]
                ),
                "fraction_of_grid_below": float(np.mean(deltas < deltas[k])),
                "contrast": grid.contrast_by_filter(k),
            }
            for k in points
        ]
        return record

    def run(self) -> dict:
        began = time.perf_counter()
        report = {"data": str(self.data), "ingest": self.ingest()}
        report["carry_over"] = self.carry_over()
        report["binary"] = self.binary()
        report["seconds"] = time.perf_counter() - began
        (self.out / "study.json").write_text(json.dumps(report, indent=1, default=_plain))
        markdown = tables(report)
        (self.out / "study.md").write_text(markdown)
        print(markdown)
        return report


def _plain(value):
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value)}")


def binary_values(params: dict) -> dict:
    """{separation, position_angle (in [0, 360)), contrast: {filter: Δm}} of a binary
    fit's parameters (or of their errors, given as {"shared": σ})."""
    shared = params["shared"]
    return {
        "separation": float(shared["separation"]),
        "position_angle": float(shared["position_angle"]) % 360.0,
        "contrast": {f: float(v) for f, v in sorted(shared["contrast"].items())},
    }


def compare(a: dict, b: dict) -> dict:
    """Agreement of two binary fits' values (`a`, `b`: {"values", "sigma"}) per quantity:
    the difference, its σ, and the verdict: "3σ" (within 3 σ), "systematics" (beyond 3 σ
    but within `TOLERANCE`) or "disagree"."""
    rows = {}
    quantities = [("separation", None), ("position_angle", None)]
    quantities += [("contrast", f) for f in a["values"]["contrast"]]
    for name, f in quantities:

        def get(d, key, name=name, f=f):
            value = d[key][name]
            return value[f] if f is not None else value

        diff = get(a, "values") - get(b, "values")
        if name == "position_angle":
            diff = (diff + 180.0) % 360.0 - 180.0
        sigma = float(np.hypot(get(a, "sigma"), get(b, "sigma")))
        limit = TOLERANCE[name]
        if name == "separation":
            limit *= 0.5 * (get(a, "values") + get(b, "values"))
        if abs(diff) <= 3 * sigma:
            verdict = "3σ"
        elif abs(diff) <= limit:
            verdict = "systematics"
        else:
            verdict = "disagree"
        key = name if f is None else f"contrast {f}"
        rows[key] = {
            "difference": diff,
            "sigma": sigma,
            "n_sigma": abs(diff) / sigma,
            "tolerance": limit,
            "verdict": verdict,
        }
    return rows


def _agreement_rows(rows: dict) -> list[str]:
    out = [
        "| 012 − 013 | difference | σ | n σ | tolerance | verdict |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in rows.items():
        out.append(
            f"| {key} | {row['difference']:+.3f} | {row['sigma']:.3f} | {row['n_sigma']:.1f} | "
            f"{row['tolerance']:.3f} | {row['verdict']} |"
        )
    return out


def _binary_row(label: str, f: str, values: dict, sigma: dict, chi2: float) -> str:
    return (
        f"| {label} | {f} | {values['separation']:.2f} ± {sigma['separation']:.2f} | "
        f"{values['position_angle']:.2f} ± {sigma['position_angle']:.2f} | "
        f"{values['contrast'][f]:.3f} ± {sigma['contrast'][f]:.3f} | {chi2:.2f} |"
    )


def tables(report: dict) -> str:
    """The study's tables in Markdown."""
    carry = report["carry_over"]
    lines = [
        "### (A) Calibration carried over from HD 37093 to HD 36805",
        "",
        "| filter | χ²_red carried | χ²_red own | χ²_red nominal | carried/own | "
        "nominal/carried | carried closer to own |",
        "|---|---|---|---|---|---|---|",
    ]
    for f, r in carry["filters"].items():
        lines.append(
            f"| {f} | {r['carried']:.2f} | {r['own']:.2f} | {r['nominal']:.2f} | "
            f"{r['carried_over_own']:.3f} | {r['nominal_over_carried']:.2f} | "
            f"{'yes' if r['passes'] else 'no'} |"
        )
    lines += ["", f"Criterion (every filter): {'PASS' if carry['passes'] else 'FAIL'}", ""]
    binary = report["binary"]
    header = [
        "| observation | filter | separation (mas) | PA (° E of N) | contrast Δm | χ²_red |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        "### (B) AB Dor: the companion, calibrators' calibration held fixed",
        "",
        "One binary per observation (separation and PA shared by its filters, a contrast per "
        "filter); χ²_red of that filter's exposures (single star before: "
        + ", ".join(
            f"{n} {f} {v['reduced_chi2']:.1f}"
            for n, o in binary["observations"].items()
            for f, v in o["single"]["filters"].items()
        )
        + "):",
        "",
        *header,
    ]
    for number, obs in binary["observations"].items():
        fit = obs["fit"]
        for f in fit["values"]["contrast"]:
            chi2 = fit["filters"][f]["reduced_chi2"]
            lines.append(_binary_row(number, f, fit["values"], fit["sigma"], chi2))
    lines += ["", *_agreement_rows(binary["agreement"]), ""]
    verdict = "PASS" if binary["passes"] else "FAIL"
    lines += [f"Criterion (012 and 013 agree, one binary per observation): {verdict}", ""]
    lines += ["Each filter fitted alone (its own separation, PA and contrast):", "", *header]
    for number, obs in binary["observations"].items():
        for f, alone in obs["by_filter"].items():
            chi2 = alone["reduced_chi2"]
            lines.append(_binary_row(number, f, alone["values"], alone["sigma"], chi2))
    lines += ["", *_agreement_rows(binary["agreement_by_filter"]), ""]
    verdict = "PASS" if binary["passes_by_filter"] else "FAIL"
    lines += [f"Each filter alone, 012 and 013 agree: {verdict}", ""]
    lines += [
        "σ: Fisher errors (`fisher_errors`), marginalised over positions and fluxes. Verdicts: "
        "3σ, systematics (beyond 3σ, within 4% / 1.5° / 0.2 mag), disagree.",
        "",
        "| companion search (grid) | exposures | best separation (mas) | best PA (°) | Δχ² | "
        f"Δχ² / χ²_red | median of Δχ² / χ²_red over the grid | "
        f"exposures alone best within {NEAR:.0f} mas |",
        "|---|---|---|---|---|---|---|---|",
    ]
    grids = [(f"AB Dor {n}", o["grid"]) for n, o in binary["observations"].items()]
    grids.append(("HD 36805 (control)", binary["control"]))
    for label, g in grids:
        lines.append(
            f"| {label} | {g['exposures']} | {g['separation']:.0f} | {g['position_angle']:.0f} | "
            f"{g['delta_chi2']:.0f} | {g['delta_chi2_over_reduced_chi2']:.0f} | "
            f"{g['median_delta_chi2_over_reduced_chi2']:.0f} | "
            f"{g['exposures_agreeing']}/{g['exposures']} |"
        )
    at = {(a["separation"], a["position_angle"]): a for a in binary["control"]["at_found"]}
    lines += [
        "",
        "Control at AB Dor's companion (the same detector offset: the rolls agree within "
        "0.6°): "
        + "; ".join(
            f"{a['separation']:.0f} mas, {a['position_angle']:.0f}°: Δχ² / χ²_red "
            f"{a['delta_chi2_over_reduced_chi2']:.0f}, above "
            f"{100 * a['fraction_of_grid_below']:.0f}% of its grid points, Δm there "
            + ", ".join(f"{f} {c:.1f}" for f, c in a["contrast"].items())
            for a in at.values()
        )
        + ".",
    ]
    starts = [
        f"{n}: second guess {o['starts']['second guess']['separation']:.0f} mas, "
        f"{o['starts']['second guess']['position_angle']:.0f}°, "
        f"{o['starts']['second guess']['contrast']:.2f} mag → differs from the grid start's "
        f"optimum by {o['starts_differ_by']['separation']:.2g} mas, "
        f"{o['starts_differ_by']['position_angle']:.2g}°, "
        f"{o['starts_differ_by']['contrast']:.2g} mag"
        for n, o in binary["observations"].items()
    ]
    lines += ["", "Two starts: " + "; ".join(starts) + ".", ""]
    lines.append(f"Study time: {report['seconds'] / 60:.1f} min.")
    return "\n".join(lines) + "\n"


STUDIES = {"jw01093": Study}
"""Study name → its runner."""


def run_study(name: str, data: Path, out: Path, configs: Path | None = None, progress=True):
    """Run study `name` (see the module docstring); its report."""
    if name not in STUDIES:
        raise ValueError(f"study: expected one of {sorted(STUDIES)}, got {name!r}")
    return STUDIES[name](data, out, configs or Path("configs") / name, progress).run()
