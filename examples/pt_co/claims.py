"""The example's claims about its MoE models, judged from the measured report."""

from typing import Dict, List


def check_claims(report: Dict, moe: str) -> List[Dict]:
    """The example's claims about the MoE model ``moe`` and whether they hold in ``report``."""
    title = report["models"][moe]
    forces = {k: v["forces_mae_mev_per_a"] for k, v in report["errors"].items()}
    claims = []

    def claim(text, holds, detail):
        claims.append({"model": moe, "claim": text, "holds": holds, "detail": detail})

    if "big" in forces and "small" in forces:
        hf = [c for c in ("adsorbate", "hf_region") if forces[moe][c] is not None]
        ratio = max(forces[moe][c] / forces["big"][c] for c in hf)
        claim(
            f"{title} is as accurate as all-big on adsorbates and high-fidelity Pt "
            "(force MAE within 10 % of all-big's)",
            ratio <= 1.1,
            f"worst MoE/all-big force MAE ratio over {', '.join(hf)}: {ratio:.2f}",
        )
        better = [c for c in hf if forces[moe][c] < forces["small"][c]]
        claim(
            f"{title} is more accurate than all-small on adsorbates and high-fidelity Pt",
            len(better) == len(hf),
            f"better on {', '.join(better) or 'none'} of {', '.join(hf)}",
        )
    fits = report["eos"]["fits"] if report["eos"] else {}
    big_fit, small_fit = fits.get(f"{moe}:big_expert", {}), fits.get(f"{moe}:small_expert", {})
    if "V0" in big_fit and "V0" in small_fit:
        dv = abs(big_fit["V0"] - small_fit["V0"]) / small_fit["V0"]
        db = abs(big_fit["B0_GPa"] - small_fit["B0_GPa"]) / small_fit["B0_GPa"]
        claim(
            f"the two experts of {title} agree on bulk Pt (V0 within 1 %, B0 within 10 %), so the "
            "interface carries no artificial strain",
            dv < 0.01 and db < 0.10,
            f"V0 differs by {100 * dv:.2f} %, B0 by {100 * db:.1f} %",
        )
    elif fits:
        claim(f"the two experts of {title} agree on bulk Pt", False,
              "no Birch-Murnaghan minimum in the sampled range for at least one expert")
    drift = report["nve_drift"]
    if drift and "big" in drift and moe in drift:
        d_moe = abs(drift[moe]["drift_mev_per_atom_per_ps"])
        d_big = abs(drift["big"]["drift_mev_per_atom_per_ps"])
        claim(
            f"NVE with {title} drifts no more than all-big at the same timestep",
            d_moe <= d_big,
            f"|drift| MoE {d_moe:.3g}, all-big {d_big:.3g} meV/atom/ps",
        )
    speed = report["speedup"]
    if speed and speed["model"] == moe:
        claim(
            f"{title} is faster than all-big",
            speed["measured"] > 1.0,
            f"measured {speed['measured']:.2f}x, ideal {speed['ideal']:.2f}x at "
            f"f = {speed['hf_fraction']:.2f}",
        )
    plain = "moe"
    if moe != plain and plain in report["models"]:
        gaps = {}
        for name in (plain, moe):
            big_fit, small_fit = fits.get(f"{name}:big_expert", {}), fits.get(f"{name}:small_expert", {})
            if "B0_GPa" in big_fit and "B0_GPa" in small_fit:
                gaps[name] = abs(big_fit["B0_GPa"] - small_fit["B0_GPa"])
        if len(gaps) == 2:
            claim(
                f"the experts of {title} have closer bulk moduli than those of "
                f"{report['models'][plain]}",
                gaps[moe] < gaps[plain],
                f"|B0 big - B0 small|: {gaps[moe]:.1f} GPa co-trained, {gaps[plain]:.1f} GPa without",
            )
    return claims
