"""The example's claims about its MoE models, judged from the measured report.

Every claim is an absolute bound or a ratio to a baseline measured in the same run, stated with
its number and threshold (``value``, ``threshold``), never a comparison of two noisy numbers
that can flip with the machine's load. Each claim has a ``key``; those of ``WORST_SEED`` (the
experts' consistency) are judged on the worst of an MoE's training seeds (``family_claims``).
"""

from typing import Dict, List, Optional, Sequence

# every threshold of the claims, in one place (the report prints them)
THRESHOLDS = {
    "core_force_ratio": 1.05,  # core force MAE, MoE / all-big (test split; measures.CORE_PARITY)
    "energy_ratio": 1.10,  # per-atom energy MAE, MoE / all-big
    # force MAE of small-expert atoms within the small cutoff of the big region: MoE / its own
    # small expert alone (nequip_moe.validation.interface.interface_penalty)
    "interface_penalty": 1.05,
    "small_region_ratio": 1.50,  # small-expert force MAE, MoE / all-big on the same atoms
    "eos_v0_rel": 0.005,  # |V0 small - V0 big| / V0 big of the MoE's experts
    "eos_b0_rel": 0.03,  # |B0 small - B0 big| / B0 big
    "disagreement_mev_per_atom": 2.0,  # experts' per-atom energy difference on shared bulk, mean
    "disagreement_max_mev_per_atom": 5.0,  # ... and its largest frame
    "split_max_force_mev_per_a": 20.0,  # worst max |F| on the split perfect crystal
    "split_improvement": 5.0,  # no-agreement MoE's worst max |F| / co-trained MoE's
    "drift_mev_per_atom_per_ps": 0.5,  # |NVE drift| at dt = 1 fs
    "dt_exponent": (1.5, 2.5),  # energy fluctuation ~ dt^p (Verlet: p = 2)
    "teacher_a0_rel": 0.01,  # labeller's bulk Pt a0 vs PBE 3.97 A
    "teacher_b0_gpa": (230.0, 300.0),  # labeller's B0 vs PBE ~250-280 GPa
    "teacher_co_bond_a": 0.02,  # labeller's CO bond vs PBE 1.14 A
}


# claims on the experts' consistency: judged on the worst training seed of an MoE
WORST_SEED = ("interface_penalty", "eos", "disagreement", "split_max_force", "split_improvement")
# claims whose value must reach the threshold from above (the others: stay below it)
AT_LEAST = ("split_improvement",)


def _claim(claims, model, text, holds, detail, value=None, threshold=None, key=None):
    claims.append({
        "model": model, "claim": text, "holds": bool(holds), "detail": detail,
        "value": value, "threshold": threshold, "key": key,
    })


def margin(claim: Dict) -> float:
    """How far a claim's value is from failing, as value / threshold (threshold / value for
    ``AT_LEAST`` claims; the largest component for several): above 1 fails."""
    value, threshold = claim["value"], claim["threshold"]
    if isinstance(value, dict):
        return max(margin({**claim, "value": value[k], "threshold": threshold[k]})
                   for k in value)
    if value is None or threshold is None:
        return 0.0 if claim["holds"] else float("inf")
    if claim.get("key") in AT_LEAST:
        return threshold / value if value > 0 else float("inf")
    return value / threshold if threshold else float("inf")


def partner_of(report: Dict, moe: str) -> Optional[str]:
    """The MoE trained without agreement terms that ``moe`` is compared with: its pair in
    ``without_agreement``, or for another training seed the same seed of that pair."""
    pairs = report.get("without_agreement") or {}
    if moe in pairs:
        return pairs[moe]
    for family, members in (report.get("seeds") or {}).items():
        if moe in members and family in pairs:
            others = (report.get("seeds") or {}).get(pairs[family], [])
            index = members.index(moe)
            return others[index] if index < len(others) else None
    return None


def family_claims(report: Dict, names: Sequence[str]) -> List[Dict]:
    """``check_claims`` of an MoE (``names[0]``) with those of its other training seeds: each
    ``WORST_SEED`` claim holds only if it holds for every seed, and shows the worst seed's
    value and every seed's detail; the other claims are the MoE's own."""
    per_seed = [check_claims(report, name) for name in names]
    if len(names) == 1:
        return per_seed[0]
    claims = []
    for claim in per_seed[0]:
        if claim["key"] not in WORST_SEED:
            claims.append(claim)
            continue
        same = [next((c for c in seed if c["key"] == claim["key"]), None) for seed in per_seed]
        missing = [n for n, c in zip(names, same) if c is None]
        judged = [c for c in same if c is not None]
        worst = max(judged, key=margin)
        details = "; ".join(f"{report['models'][n]}: {c['detail']}" if c else f"{n}: not measured"
                            for n, c in zip(names, same))
        claims.append({
            **worst, "model": names[0],
            "claim": f"{claim['claim']} (worst of {len(names)} training seeds)",
            "holds": not missing and all(c["holds"] for c in judged),
            "detail": details,
            "seeds": {n: (c["value"] if c else None) for n, c in zip(names, same)},
        })
    return claims


def check_claims(report: Dict, moe: str) -> List[Dict]:
    """The example's claims about the MoE model ``moe`` and whether they hold in ``report``."""
    title = report["models"][moe]
    errors = report["errors"]
    forces = {k: v["forces_mae_mev_per_a"] for k, v in errors.items()}
    energy = {k: v["energy_mae_mev_per_atom"] for k, v in errors.items()}
    claims: List[Dict] = []
    t = THRESHOLDS

    def claim(*args, **kwargs):
        _claim(claims, moe, *args, **kwargs)

    if "big" in forces:
        if forces[moe].get("core") is not None and forces["big"].get("core"):
            ratio = forces[moe]["core"] / forces["big"]["core"]
            claim(
                f"{title} is as accurate as all-big on the core (adsorbates, Pt bonded to them, "
                f"under-coordinated Pt): force MAE <= {t['core_force_ratio']:.2f}x all-big's",
                ratio <= t["core_force_ratio"],
                f"core force MAE {forces[moe]['core']:.1f} vs all-big {forces['big']['core']:.1f} "
                f"meV/A: {ratio:.3f}x",
                ratio, t["core_force_ratio"], key="core_force_ratio",
            )
        if energy["big"]["all"]:
            ratio = energy[moe]["all"] / energy["big"]["all"]
            claim(
                f"{title}'s per-atom energy MAE <= {t['energy_ratio']:.2f}x all-big's",
                ratio <= t["energy_ratio"],
                f"{energy[moe]['all']:.2f} vs {energy['big']['all']:.2f} meV/atom: {ratio:.3f}x",
                ratio, t["energy_ratio"], key="energy_ratio",
            )
        if forces[moe].get("small") is not None and forces["big"].get("small"):
            ratio = forces[moe]["small"] / forces["big"]["small"]
            claim(
                f"{title}'s small-expert region (bulk) force MAE <= {t['small_region_ratio']:.1f}x "
                "all-big's on the same atoms",
                ratio <= t["small_region_ratio"],
                f"{forces[moe]['small']:.1f} vs {forces['big']['small']:.1f} meV/A: {ratio:.2f}x",
                ratio, t["small_region_ratio"], key="small_region_ratio",
            )
    fair = (report.get("interface_penalty") or {}).get(moe)
    if fair is not None:
        # information only: next to / far from the big region, over all-big's same ratio
        near, far = forces[moe].get("interface"), forces[moe].get("interface_far")
        big_near = forces.get("big", {}).get("interface")
        big_far = forces.get("big", {}).get("interface_far")
        relative = (f"; information: next to / far from the big region {near / far:.2f}x, "
                    f"all-big's {big_near / big_far:.2f}x" if near and far and big_near and big_far
                    else "")
        text = (f"{title} has no interface penalty: force MAE of small-expert atoms within the "
                f"small expert's cutoff ({fair['shell_width_a']:.1f} A) of the big region <= "
                f"{t['interface_penalty']:.2f}x that of its own small expert alone (every Pt "
                "relabelled small) on the same atoms")
        if fair["ratio"] is None:
            claim(text, False, "the test split has no small-expert atoms next to the big region",
                  key="interface_penalty")
        else:
            claim(
                text, fair["ratio"] <= t["interface_penalty"],
                f"{fair['moe_forces_mae_mev_per_a']:.1f} vs "
                f"{fair['low_alone_forces_mae_mev_per_a']:.1f} meV/A on {fair['shell_atoms']} "
                f"atoms: {fair['ratio']:.3f}x{relative}",
                fair["ratio"], t["interface_penalty"], key="interface_penalty",
            )
    if "small" in forces and forces[moe].get("core") is not None and forces["small"].get("core"):
        ratio = forces[moe]["core"] / forces["small"]["core"]
        claim(
            f"{title} is more accurate than all-small on the core (force MAE ratio < 1)",
            ratio < 1.0,
            f"core force MAE {forces[moe]['core']:.1f} vs all-small {forces['small']['core']:.1f} "
            f"meV/A: {ratio:.2f}x",
            ratio, 1.0, key="core_vs_small",
        )

    fits = report["eos"]["fits"] if report.get("eos") else {}
    big_fit, small_fit = fits.get(f"{moe}:big_expert", {}), fits.get(f"{moe}:small_expert", {})
    if "V0" in big_fit and "V0" in small_fit:
        dv = abs(small_fit["V0"] - big_fit["V0"]) / big_fit["V0"]
        db = abs(small_fit["B0_GPa"] - big_fit["B0_GPa"]) / big_fit["B0_GPa"]
        claim(
            f"the experts of {title} agree on bulk Pt: V0 within {100 * t['eos_v0_rel']:.1f} %, "
            f"B0 within {100 * t['eos_b0_rel']:.0f} % of the big expert's",
            dv <= t["eos_v0_rel"] and db <= t["eos_b0_rel"],
            f"V0 differs by {100 * dv:.2f} %, B0 by {100 * db:.1f} % "
            f"({small_fit['B0_GPa']:.0f} vs {big_fit['B0_GPa']:.0f} GPa)",
            {"V0": dv, "B0": db}, {"V0": t["eos_v0_rel"], "B0": t["eos_b0_rel"]}, key="eos",
        )
    elif fits:
        claim(f"the experts of {title} agree on bulk Pt", False,
              "no Birch-Murnaghan minimum in the sampled range for at least one expert", key="eos")
    agreement = (report.get("expert_disagreement") or {}).get(moe)
    if agreement:
        mean, largest = agreement["energy_mae_mev_per_atom"], agreement["energy_max_mev_per_atom"]
        claim(
            f"the experts of {title} agree on shared bulk: per-atom energy difference "
            f"<= {t['disagreement_mev_per_atom']:.0f} meV/atom on average and "
            f"<= {t['disagreement_max_mev_per_atom']:.0f} on every frame",
            mean <= t["disagreement_mev_per_atom"] and largest <= t["disagreement_max_mev_per_atom"],
            f"mean {mean:.2f}, max {largest:.2f} meV/atom over {agreement['frames']} bulk "
            f"frames; forces differ by {agreement['forces_mae_mev_per_a']:.1f} meV/A",
            {"mean": mean, "max": largest},
            {"mean": t["disagreement_mev_per_atom"], "max": t["disagreement_max_mev_per_atom"]},
            key="disagreement",
        )

    split = report.get("split_crystal")
    partner = partner_of(report, moe)
    if split and moe in split["models"] and partner is not None:
        worst = split["models"][moe]["worst_max_force_mev_per_a"]
        strains = ", ".join(f"{100 * s:+.0f}" for s in split["strains"])
        claim(
            f"{title} has no artificial interface force on the split perfect crystal: "
            f"max |F| <= {t['split_max_force_mev_per_a']:.0f} meV/A at every strain",
            worst <= t["split_max_force_mev_per_a"],
            f"worst max |F| {worst:.1f} meV/A over strains {strains} %",
            worst, t["split_max_force_mev_per_a"], key="split_max_force",
        )
        if partner in split["models"]:
            other = split["models"][partner]["worst_max_force_mev_per_a"]
            factor = other / worst if worst > 0 else float("inf")
            claim(
                f"co-training removes the interface force: {title}'s worst max |F| on the split "
                f"crystal >= {t['split_improvement']:.0f}x below {report['models'][partner]}'s",
                factor >= t["split_improvement"],
                f"{worst:.1f} vs {other:.1f} meV/A: {factor:.1f}x",
                factor, t["split_improvement"], key="split_improvement",
            )

    claims += dynamics_claims(report, moe)
    speed = report.get("speedup")
    if speed and speed["model"] == moe:
        claim(
            f"{title} is faster than all-big",
            speed["measured"] > 1.0,
            f"measured {speed['measured']:.2f}x, ideal {speed['ideal']:.2f}x at "
            f"f = {speed['hf_fraction']:.2f}",
            speed["measured"], 1.0, key="speed",
        )
    return claims


def dynamics_claims(report: Dict, name: str) -> List[Dict]:
    """Absolute NVE bounds for model ``name``: |drift| and the dt^2 scaling of the energy
    fluctuation (ASE), and the LAMMPS drift for the model it ran."""
    claims: List[Dict] = []
    t = THRESHOLDS
    title = report["models"].get(name, name)
    run = (report.get("nve_drift") or {}).get(name)
    if run:
        drift = abs(run["drift_mev_per_atom_per_ps"])
        _claim(
            claims, name,
            f"NVE with {title} conserves energy: |drift| <= "
            f"{t['drift_mev_per_atom_per_ps']} meV/atom/ps at dt = {run['timestep_fs']:g} fs",
            drift <= t["drift_mev_per_atom_per_ps"],
            f"|drift| {drift:.4f} meV/atom/ps over {run['steps']} steps, "
            f"max |E - E0| {run['max_deviation_mev_per_atom']:.3f} meV/atom",
            drift, t["drift_mev_per_atom_per_ps"], key="drift",
        )
    scaling = (report.get("nve_scaling") or {}).get(name)
    if scaling and scaling.get("exponent") is not None:
        low, high = t["dt_exponent"]
        p = scaling["exponent"]
        _claim(
            claims, name,
            f"the NVE energy fluctuation of {title} scales as dt^2 (Verlet): exponent in "
            f"[{low}, {high}]",
            low <= p <= high,
            f"fluctuation {scaling['dt']['fluctuation_mev_per_atom']:.4f} meV/atom at "
            f"{scaling['dt']['timestep_fs']:g} fs, "
            f"{scaling['2dt']['fluctuation_mev_per_atom']:.4f} "
            f"at {scaling['2dt']['timestep_fs']:g} fs: exponent {p:.2f}",
            p, [low, high], key="dt_exponent",
        )
    lammps = report.get("lammps_nve")
    if lammps and lammps.get("model", "moe") == name:
        drift = abs(lammps["drift_mev_per_atom_per_ps"])
        _claim(
            claims, name,
            f"NVE of {title} in LAMMPS conserves energy: |drift| <= "
            f"{t['drift_mev_per_atom_per_ps']} meV/atom/ps",
            drift <= t["drift_mev_per_atom_per_ps"],
            f"|drift| {drift:.4f} meV/atom/ps over {lammps['steps']} steps",
            drift, t["drift_mev_per_atom_per_ps"], key="lammps_drift",
        )
    return claims


def teacher_claims(report: Dict) -> List[Dict]:
    """Label sanity of the teacher against PBE (judged for SevenNet; EMT is not PBE and is
    only shown)."""
    sanity = report.get("teacher")
    if not sanity or report["notes"].get("labeller") != "sevenn":
        return []
    claims: List[Dict] = []
    t = THRESHOLDS
    ref = sanity["pbe_reference"]
    if sanity.get("a0_A") is not None:
        rel = abs(sanity["a0_A"] - ref["a0_A"]) / ref["a0_A"]
        _claim(claims, "teacher", f"the labeller's bulk Pt a0 is within "
               f"{100 * t['teacher_a0_rel']:.0f} % of PBE's {ref['a0_A']} A",
               rel <= t["teacher_a0_rel"],
               f"a0 = {sanity['a0_A']:.3f} A", sanity["a0_A"], ref["a0_A"])
    if sanity.get("B0_GPa") is not None:
        low, high = t["teacher_b0_gpa"]
        _claim(claims, "teacher", f"the labeller's bulk Pt B0 lies in [{low:.0f}, {high:.0f}] GPa "
               f"(PBE ~{ref['B0_GPa'][0]:.0f}-{ref['B0_GPa'][1]:.0f})",
               low <= sanity["B0_GPa"] <= high, f"B0 = {sanity['B0_GPa']:.0f} GPa",
               sanity["B0_GPa"], [low, high])
    if sanity.get("co_bond_A") is not None:
        diff = abs(sanity["co_bond_A"] - ref["co_bond_A"])
        _claim(claims, "teacher", f"the labeller's CO bond is within {t['teacher_co_bond_a']} A of "
               f"PBE's {ref['co_bond_A']} A", diff <= t["teacher_co_bond_a"],
               f"d(C-O) = {sanity['co_bond_A']:.3f} A", sanity["co_bond_A"], ref["co_bond_A"])
    return claims


def baseline_claims(report: Dict, names: Optional[List[str]] = None) -> List[Dict]:
    """The dynamics bounds for the single-model baselines (all-big) that ran NVE."""
    claims: List[Dict] = []
    for name in names or ["big"]:
        if name in report["models"]:
            claims += [c for c in dynamics_claims(report, name)
                       if "LAMMPS" not in c["claim"]]
    return claims
