"""Smoke test of ``nequip-moe bench``: tiny eager run, JSON schema, figures from the raw times."""

import json
import math
import pathlib
import statistics

import numpy as np
import pytest

from nequip_moe.benchmark import SlabSpec, high_fidelity_mask
from nequip_moe.scripts.cli import main

TINY_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "tiny_moe.yaml"
ROW_KEYS = {
    "n_atoms",
    "hf_fraction",
    "n_hf_atoms",
    "target_fraction",
    "t_moe_s",
    "t_big_s",
    "t_small_s",
    "cost_ratio",
    "speedup",
    "ideal_speedup",
    "efficiency",
    "hf_edge_fraction",
    "lf_edge_fraction",
    "ideal_speedup_edges",
    "efficiency_edges",
    "times_s",
    "n_edges",
}


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    json_path = out / "results.json"
    args = ["bench", "--quick", "--eager", "--config", str(TINY_CONFIG), "--out-dir", str(out)]
    rc = main(args + ["--json", str(json_path)])
    assert rc == 0
    return out, json.loads(json_path.read_text())


def test_schema(bench_run):
    out, results = bench_run
    assert {"rows", "scaling", "memory", "training", "machine"} <= set(results)
    assert len(results["rows"]) == 4  # two sizes x two fractions (--quick)
    for row in results["rows"]:
        assert ROW_KEYS <= set(row)
        for name in ("moe", "big", "small"):
            assert len(row["times_s"][name]) == 2 and all(t > 0 for t in row["times_s"][name])
    machine = results["machine"]
    assert machine["device"] == "cpu" and machine["torch_threads"] == 1
    assert {"torch", "nequip", "nequip-allegro", "ase"} <= set(machine["versions"])
    for path in results["plots"]:
        assert pathlib.Path(path).stat().st_size > 0
    assert pathlib.Path(results["plots"][0]).parent == out


def test_figures_follow_from_raw_times(bench_run):
    _, results = bench_run
    for row in results["rows"]:
        t_moe, t_big, t_small = (
            statistics.median(row["times_s"][k]) for k in ("moe", "big", "small")
        )
        f = row["n_hf_atoms"] / row["n_atoms"]
        assert row["hf_fraction"] == pytest.approx(f)
        c = t_small / t_big
        ideal = 1.0 / (f + (1.0 - f) * c)
        assert row["cost_ratio"] == pytest.approx(c)
        assert row["ideal_speedup"] == pytest.approx(ideal)
        assert row["speedup"] == pytest.approx(t_big / t_moe)
        assert row["efficiency"] == pytest.approx(t_big / t_moe / ideal)
        ideal_edges = 1.0 / (row["hf_edge_fraction"] + row["lf_edge_fraction"] * c)
        assert row["ideal_speedup_edges"] == pytest.approx(ideal_edges)
        if row["target_fraction"] == 1.0:
            assert f == 1.0 and row["ideal_speedup"] == pytest.approx(1.0)
        else:
            assert 0.0 < f < 1.0


def test_scaling_memory_training(bench_run):
    _, results = bench_run
    rows = results["rows"]
    big = results["scaling"]["big"]
    assert big["n_atoms"] == sorted({r["n_atoms"] for r in rows})
    slope = np.polyfit(np.log(big["n_atoms"]), np.log(big["time_s"]), 1)[0]
    assert big["exponent"] == pytest.approx(slope)
    assert set(results["scaling"]) == {"big", "small", "moe f=0.25", "moe f=1"}

    memory = results["memory"]
    assert memory["n_atoms"] == max(r["n_atoms"] for r in rows)
    for name in ("moe", "big", "small"):
        entry = memory[name]
        assert entry["peak_bytes"] == entry["baseline_bytes"] + entry["call_bytes"]
        assert entry["call_bytes"] > 0
    moe_over_big = memory["moe"]["call_bytes"] / memory["big"]["call_bytes"]
    assert memory["moe_over_big"] == pytest.approx(moe_over_big)

    training = results["training"]
    assert training["n_shared_atoms"] > 0
    for name in ("big", "moe", "moe_cotrain"):
        median = statistics.median(training["times_s"][name])
        assert training[f"{name}_step_s"] == pytest.approx(median)
    assert training["moe_cotrain_over_big"] == pytest.approx(
        training["moe_cotrain_step_s"] / training["big_step_s"]
    )


def test_high_fidelity_mask_takes_forced_then_highest():
    atoms = SlabSpec(size=4, layers=4, co_spacing=2).build()
    forced = atoms.numbers != 78
    mask = high_fidelity_mask(atoms, 0.5, forced)
    assert mask.sum() == round(0.5 * len(atoms)) and mask[forced].all()
    z = atoms.positions[:, 2]
    assert z[mask & ~forced].min() > z[~mask].max()
    # below the forced count the forced atoms alone are high fidelity
    assert (high_fidelity_mask(atoms, 0.0, forced) == forced).all()
    assert forced.sum() == 8 and math.isclose(z[forced].min(), z.max() - 1.15, abs_tol=0.2)


def test_model_files_must_come_together(tmp_path, capsys):
    assert main(["bench", "--moe", str(tmp_path / "moe.nequip.pt2")]) == 2
    assert "give all of --moe --big --small" in capsys.readouterr().err
