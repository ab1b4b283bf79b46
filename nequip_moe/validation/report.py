"""Checks (value, threshold, verdict) from the measures, and the ``validation.md`` rendering.

Every check compares one measured number with its threshold (``THRESHOLDS``; ``None`` makes
it information only): ``<=`` for errors, forces and drifts (the drift by its magnitude),
``>=`` for the speed-up, ``within`` for the dt exponent. Verdicts: ``pass``, ``fail``,
``info`` (no threshold), ``not applicable`` (the measure could not run on this model or these
inputs; the detail says why).
"""

from typing import Dict, List, Optional, Sequence, Tuple, Union

Threshold = Optional[Union[float, Tuple[float, float]]]

# name -> (default threshold, comparison, unit, what is measured)
CHECKS: Dict[str, Tuple[Threshold, str, str, str]] = {
    "split_crystal_force": (20.0, "<=", "meV/A", "largest interface force on the split perfect crystal (all cuts, all strains)"),
    "eos_v0": (0.5, "<=", "%", "V0 difference between the experts alone (Birch-Murnaghan)"),
    "eos_b0": (3.0, "<=", "%", "B0 difference between the experts alone"),
    "reference_v0": (0.5, "<=", "%", "V0 of each expert against the reference model's"),
    "reference_b0": (3.0, "<=", "%", "B0 of each expert against the reference model's"),
    "energy_disagreement_mean": (2.0, "<=", "meV/atom", "experts' per-atom energy disagreement on shared bulk, mean over frames"),
    "energy_disagreement_max": (5.0, "<=", "meV/atom", "experts' per-atom energy disagreement on shared bulk, largest frame"),
    "force_disagreement_mean": (None, "<=", "meV/A", "experts' force disagreement on shared bulk, mean absolute component"),
    "interface_penalty": (1.05, "<=", "x", "MoE force error on the low-fidelity shell over its low-fidelity expert's alone"),
    "core_ratio": (None, "<=", "x", "MoE force error on the high-fidelity atoms over the reference model's"),
    "nve_drift": (0.5, "<=", "meV/atom/ps", "|total-energy drift| in NVE (velocity Verlet)"),
    "nve_dt_exponent": ((1.5, 2.5), "within", "", "exponent p of the NVE energy fluctuation ~ dt^p (Verlet: 2)"),
    "speedup": (None, ">=", "x", "measured speed-up of the MoE over the reference model (else its high-fidelity expert alone)"),
}
THRESHOLDS: Dict[str, Threshold] = {name: spec[0] for name, spec in CHECKS.items()}
VERDICTS = ("pass", "fail", "info", "not applicable")


def parse_threshold(text: str) -> Tuple[str, Threshold]:
    """``NAME=VALUE``, ``NAME=LOW:HIGH`` (a range) or ``NAME=none`` (information only)."""
    name, _, value = text.partition("=")
    if name not in CHECKS or not value:
        raise ValueError(
            f"--threshold `{text}`: expected NAME=VALUE with NAME one of {', '.join(CHECKS)}"
        )
    try:
        if value.lower() == "none":
            return name, None
        if ":" in value:
            low, high = (float(v) for v in value.split(":"))
            return name, (low, high)
        return name, float(value)
    except ValueError:
        raise ValueError(f"--threshold `{text}`: VALUE must be a number, LOW:HIGH or none") from None


def check(name: str, value: Optional[float], thresholds: Dict[str, Threshold], detail: str = "",
          not_applicable: Optional[str] = None, failed: Optional[str] = None) -> Dict:
    """One check: ``name``'s value against its threshold, with a verdict.

    Args:
        name: one of ``CHECKS``
        value: the measured number (``None`` with ``not_applicable`` or ``failed``)
        thresholds: name -> threshold (``THRESHOLDS`` with the user's overrides)
        detail: what the number is made of
        not_applicable: why the measure could not run (verdict ``not applicable``)
        failed: why the measure ran but has no number (e.g. no EOS minimum; verdict ``fail``)
    """
    _, comparison, unit, title = CHECKS[name]
    threshold = thresholds.get(name, THRESHOLDS[name])
    record = {"name": name, "title": title, "value": value, "threshold": threshold,
              "comparison": comparison, "unit": unit, "detail": detail}
    if not_applicable is not None:
        return {**record, "verdict": "not applicable", "detail": not_applicable}
    if failed is not None:
        return {**record, "verdict": "fail", "detail": failed}
    if threshold is None:
        return {**record, "verdict": "info"}
    if comparison == "within":
        holds = threshold[0] <= value <= threshold[1]
    elif comparison == ">=":
        holds = value >= threshold
    else:
        holds = abs(value) <= threshold
    return {**record, "verdict": "pass" if holds else "fail"}


def headline(report: Dict) -> str:
    """``FAIL`` if a check failed, ``INCOMPLETE`` if none failed but a check with a threshold
    could not run, else ``PASS``."""
    if not report["passed"]:
        return "FAIL"
    return "PASS" if report["complete"] else "INCOMPLETE"


def summary(checks: Sequence[Dict]) -> Dict[str, int]:
    """Number of checks of each verdict."""
    return {v: sum(c["verdict"] == v for c in checks) for v in VERDICTS}


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, (tuple, list)):
        return f"[{_number(value[0])}, {_number(value[1])}]"
    return f"{value:.4g}"


def _threshold(c: Dict) -> str:
    if c["threshold"] is None:
        return "-"
    return f"{c['comparison']} {_number(c['threshold'])}"


def markdown(report: Dict) -> str:
    """``validation.md``: the checks table, the model and inputs, and the plots."""
    model = report["model"]
    counts = report["summary"]
    lines = [
        f"# Validation of `{model['path']}`",
        "",
        f"{model['kind']} MoE ({'compiled' if model['compiled'] else 'eager'}), experts "
        + ", ".join(f"{e} (r_max {r:g} A)" for e, r in zip(model["experts"], model["expert_r_max"]))
        + f"; reference: {report['inputs'].get('reference') or 'none'}.",
        "",
        f"**{headline(report)}**: {counts['pass']} checks pass, "
        f"{counts['fail']} fail, {counts['info']} information, "
        f"{counts['not applicable']} not applicable.",
        "",
        "| check | value | threshold | unit | verdict | detail |",
        "|---|---|---|---|---|---|",
    ]
    for c in report["checks"]:
        title, detail = (text.replace("|", "\\|") for text in (c["title"], c["detail"]))
        lines.append(
            f"| {c['name']}: {title} | {_number(c['value'])} | {_threshold(c)} | {c['unit']} "
            f"| {c['verdict']} | {detail} |"
        )
    bulk = report["inputs"].get("bulk") or {}
    lines += ["", "## Inputs", ""]
    lines += [f"- {key}: {value}" for key, value in report["inputs"].items() if key != "bulk"]
    lines += [f"- bulk: {', '.join(f'{k} {v}' for k, v in bulk.items())}"] if bulk else []
    lines += ["", "## Time", ""]
    lines += [f"- {name}: {seconds:.1f} s" for name, seconds in report["seconds"].items()]
    if report.get("plots"):
        lines += ["", "## Plots", ""]
        lines += [f"![{name}]({path})" for name, path in report["plots"].items()]
    return "\n".join(lines) + "\n"


def _split_crystal(result, t, reason):
    if reason:
        return [check("split_crystal_force", None, t, not_applicable=reason)]
    worst = result["worst"]
    outside = sum(r.get("outside_training", False) for g in result["geometries"].values() for r in g["rows"])
    return [check(
        "split_crystal_force", result["worst_max_interface_force_mev_per_a"], t,
        f"worst: {worst['geometry']} at strain {100 * worst['strain']:+.1f} %; cuts "
        + ", ".join(result["geometries"])
        + f"; strains {', '.join(f'{100 * s:+.1f}' for s in result['strains'])} %"
        + (f" ({outside} rows outside the training strains)" if outside else ""),
    )]


def _eos(result, t, reason):
    names = ["eos_v0", "eos_b0"] + (["reference_v0", "reference_b0"] if result and result.get("reference") else [])
    if reason:
        return [check(name, None, t, not_applicable=reason) for name in names[:2]]
    out = []
    for prefix, spread in (("eos", result["experts"]), ("reference", result.get("reference"))):
        if spread is None:
            continue
        fits = result["fits"]
        if spread["v0_percent"] is None:
            why = f"no Birch-Murnaghan minimum for {', '.join(spread['failed'])} in the sampled volumes"
            out += [check(f"{prefix}_{q}", None, t, failed=why) for q in ("v0", "b0")]
            continue
        detail = "; ".join(
            f"{n}: V0 {fits[n]['V0']:.3f} A^3/atom, B0 {fits[n]['B0_GPa']:.1f} GPa" for n in fits if "V0" in fits[n]
        )
        out += [check(f"{prefix}_v0", spread["v0_percent"], t, detail),
                check(f"{prefix}_b0", spread["b0_percent"], t, detail)]
    return out


def _disagreement(result, t, reason):
    names = ("energy_disagreement_mean", "energy_disagreement_max", "force_disagreement_mean")
    if reason or not result.get("frames"):
        why = reason or "no shared bulk atoms to compare the experts on"
        return [check(name, None, t, not_applicable=why) for name in names]
    detail = f"{result['frames']} frames, {result['atoms']} shared atoms"
    return [
        check(names[0], result["energy_mean_mev_per_atom"], t, detail),
        check(names[1], result["energy_max_mev_per_atom"], t, detail),
        check(names[2], result["forces_mae_mev_per_a"], t,
              f"{detail}; largest component {result['forces_max_mev_per_a']:.1f} meV/A"),
    ]


def _interface(result, t, reason):
    if reason:
        return [check(n, None, t, not_applicable=reason) for n in ("interface_penalty", "core_ratio")]
    penalty = result["penalty"]
    out = []
    if penalty["ratio"] is None:
        out.append(check("interface_penalty", None, t, not_applicable="no test frame has "
                         "low-fidelity atoms within the shell of a high-fidelity region"))
    else:
        out.append(check(
            "interface_penalty", penalty["ratio"], t,
            f"{penalty['moe_forces_mae_mev_per_a']:.2f} vs {penalty['low_alone_forces_mae_mev_per_a']:.2f} "
            f"meV/A on {penalty['shell_atoms']} shell atoms within {penalty['shell_width_a']:g} A",
        ))
    core = result.get("core")
    if core is None or core["ratio"] is None:
        out.append(check("core_ratio", None, t, not_applicable="needs --reference and high-fidelity atoms"))
    else:
        out.append(check("core_ratio", core["ratio"], t, f"{core['moe_forces_mae_mev_per_a']:.2f} vs "
                         f"{core['reference_forces_mae_mev_per_a']:.2f} meV/A"))
    return out


def _nve(result, t, reason):
    if reason:
        return [check(n, None, t, not_applicable=reason) for n in ("nve_drift", "nve_dt_exponent")]
    run = result["dt"]
    out = [check("nve_drift", run["drift_mev_per_atom_per_ps"], t,
                 f"{run['atoms']} atoms, {run['steps']} steps of {run['timestep_fs']:g} fs from "
                 f"{run['temperature_k']:g} K; max |E - E0| {run['max_deviation_mev_per_atom']:.3g} meV/atom")]
    if result["exponent"] is None:
        out.append(check("nve_dt_exponent", None, t, failed="no energy fluctuation to scale"))
    else:
        out.append(check("nve_dt_exponent", result["exponent"], t,
                         f"fluctuation {run['fluctuation_mev_per_atom']:.3g} meV/atom at {run['timestep_fs']:g} fs, "
                         f"{result['2dt']['fluctuation_mev_per_atom']:.3g} at {result['2dt']['timestep_fs']:g} fs"))
    return out


def _speed(result, t, reason):
    if not reason and "measured" not in result and "measured_vs_high_alone" not in result:
        reason = "needs --reference, or a model whose experts can run alone, to time against"
    if reason:
        return [check("speedup", None, t, not_applicable=reason)]
    against = "the reference" if "measured" in result else "its high-fidelity expert alone on every atom (no --reference)"
    value = result.get("measured", result.get("measured_vs_high_alone"))
    ideal = f"; ideal {result['ideal']:.2f}x (cost ratio {result['cost_ratio']:.3f})" if "ideal" in result else ""
    fraction = f", high-fidelity fraction {result['f_high']:.2f}" if result["f_high"] is not None else ""
    return [check("speedup", value, t, f"over {against}; {result['atoms']} atoms{fraction}{ideal}")]


CHECK_BUILDERS = {
    "split_crystal": _split_crystal,
    "eos": _eos,
    "disagreement": _disagreement,
    "interface": _interface,
    "nve": _nve,
    "speed": _speed,
}
MEASURES = tuple(CHECK_BUILDERS)


def checks_from_measures(measures: Dict, thresholds: Dict[str, Threshold], skipped: Dict[str, str]) -> List[Dict]:
    """Every check from the measures' results (``runner.run_validation``'s ``measures``).

    Args:
        measures: measure name -> result dict (or ``{"not_applicable": reason}``)
        thresholds: name -> threshold
        skipped: measure name -> why it did not run
    """
    checks = []
    for measure, build in CHECK_BUILDERS.items():
        result = measures.get(measure) or {}
        checks += build(result, thresholds, skipped.get(measure) or result.get("not_applicable"))
    return checks
