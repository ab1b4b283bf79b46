"""``nequip-moe bench`` on a tiny eager run: every figure recomputed independently from the raw
times, the structures and the cutoffs; the paper preset's architectures; argument errors; and
the facts of the many-rank cost model (``benchmarks/project_ranks.py``)."""

import json
import os
import pathlib
import statistics
import subprocess
import sys

import numpy as np
import pytest
from ase.io import read
from ase.neighborlist import neighbor_list


from nequip_moe.benchmarking import high_fidelity_mask
from nequip_moe.benchmarking.options import DEFAULT_CONFIG
from nequip_moe.benchmarking.structures import CO_BOND, CO_TOP_SITE_HEIGHT, BenchSlab
from nequip_moe.benchmarking.untrained import bench_configs
from nequip_moe.scripts.cli import main

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import project_ranks  # noqa: E402

CONFIGS = REPO / "configs"
TINY_CONFIG = CONFIGS / "tiny_moe.yaml"
R_MAX = {"big": 4.5, "small": 4.0}  # the experts' cutoffs in configs/tiny_moe.yaml


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """A quick eager bench of the tiny config on the default slabs of sizes 2 and 3."""
    out = tmp_path_factory.mktemp("bench")
    json_path = out / "results.json"
    args = ["bench", "--slabs", "2", "3", "--quick", "--eager",
            "--config", str(TINY_CONFIG), "--out-dir", str(out), "--json", str(json_path)]
    assert main(args) == 0
    frames = read(out / "slabs.xyz", index=":")
    assert [len(a) for a in frames] == [2 * 2 * 8 + 2, 3 * 3 * 8 + 2]
    return out, frames, json.loads(json_path.read_text())


def test_runs_every_size_and_fraction(bench_run):
    out, frames, results = bench_run
    rows = results["rows"]
    assert [(r["n_atoms"], r["target_fraction"]) for r in rows] == [
        (len(a), f) for a in frames for f in (0.25, 1.0)
    ]
    for row in rows:
        for name in ("moe", "big", "small"):
            assert len(row["times_s"][name]) == 2 and all(t > 0 for t in row["times_s"][name])
    assert results["machine"]["torch_threads"] == 1
    assert [pathlib.Path(p).name for p in results["plots"]] == ["speedup.png", "scaling.png"]
    assert all(pathlib.Path(p).stat().st_size > 0 and pathlib.Path(p).parent == out
               for p in results["plots"])


def test_figures_follow_from_raw_times(bench_run):
    _, _, results = bench_run
    for row in results["rows"]:
        t_moe, t_big, t_small = (
            statistics.median(row["times_s"][k]) for k in ("moe", "big", "small")
        )
        f = row["n_hf_atoms"] / row["n_atoms"]
        c = t_small / t_big
        ideal = 1.0 / (f + (1.0 - f) * c)
        assert row["hf_fraction"] == pytest.approx(f)
        assert row["cost_ratio"] == pytest.approx(c)
        assert row["ideal_speedup"] == pytest.approx(ideal)
        assert row["speedup"] == pytest.approx(t_big / t_moe)
        assert row["efficiency"] == pytest.approx(t_big / t_moe / ideal)
        ideal_edges = 1.0 / (row["hf_edge_fraction"] + row["lf_edge_fraction"] * c)
        assert row["ideal_speedup_edges"] == pytest.approx(ideal_edges)
        assert row["efficiency_edges"] == pytest.approx(t_big / t_moe / ideal_edges)


def test_fractions_and_edges_counted_independently(bench_run):
    """The high-fidelity atoms are C, O and then the highest Pt; edge shares come from ASE's
    neighbour list at each expert's own cutoff."""
    _, frames, results = bench_run
    for atoms, rows in zip(frames, (results["rows"][:2], results["rows"][2:])):
        order = np.argsort(-atoms.positions[:, 2], kind="stable")
        for row in rows:
            is_co = atoms.numbers != 78
            n_hf = max(int(round(row["target_fraction"] * len(atoms))), int(is_co.sum()))
            pt_by_height = [i for i in order if not is_co[i]]
            mask = is_co.copy()
            mask[pt_by_height[: n_hf - int(is_co.sum())]] = True
            assert row["n_hf_atoms"] == mask.sum()
            centres = {name: neighbor_list("i", atoms, r) for name, r in R_MAX.items()}
            assert row["n_edges"]["big"] == len(centres["big"])
            assert row["n_edges"]["small"] == len(centres["small"])
            assert row["hf_edge_fraction"] == pytest.approx(mask[centres["big"]].mean())
            assert row["lf_edge_fraction"] == pytest.approx((~mask)[centres["small"]].mean())
            if row["target_fraction"] == 1.0:
                assert row["ideal_speedup"] == pytest.approx(1.0)


def test_cost_weights_from_the_largest_structure(bench_run):
    _, _, results = bench_run
    largest = max(results["rows"], key=lambda r: r["n_atoms"])
    t = {"big": largest["t_big_s"], "small": largest["t_small_s"]}
    assert results["cost_weights"] == pytest.approx(
        {name: value / min(t.values()) for name, value in t.items()}
    )
    assert min(results["cost_weights"].values()) == 1.0


def test_scaling_memory_training(bench_run):
    _, frames, results = bench_run
    big = results["scaling"]["big"]
    assert big["n_atoms"] == [len(a) for a in frames]
    slope = np.polyfit(np.log(big["n_atoms"]), np.log(big["time_s"]), 1)[0]
    assert big["exponent"] == pytest.approx(slope)

    memory = results["memory"]
    assert memory["n_atoms"] == len(frames[-1])
    if memory["big"]["call_bytes"] > 0:
        assert memory["moe_over_big"] == pytest.approx(
            memory["moe"]["call_bytes"] / memory["big"]["call_bytes"]
        )
    else:  # within the memory the process had already: no ratio, not a division by zero
        assert memory["moe_over_big"] is None

    training = results["training"]
    assert training["n_atoms"] == 2 * len(frames[0])  # --quick: two copies of the smallest
    assert 0 < training["n_shared_atoms"] < training["n_atoms"]
    for name in ("big", "moe", "moe_cotrain", "moe_staged"):
        median = statistics.median(training["times_s"][name])
        assert training[f"{name}_step_s"] == pytest.approx(median)
        if name != "big":
            assert training[f"{name}_over_big"] == pytest.approx(median / training["big_step_s"])


def test_high_fidelity_mask_takes_forced_then_highest():
    atoms = BenchSlab(size=4, layers=4, co_spacing=2).build()
    forced = atoms.numbers != 78
    mask = high_fidelity_mask(atoms, 0.5, forced)
    assert mask.sum() == round(0.5 * len(atoms)) and mask[forced].all()
    z = atoms.positions[:, 2]
    assert z[mask & ~forced].min() > z[~mask].max()
    # below the forced count the forced atoms alone are high fidelity
    assert (high_fidelity_mask(atoms, 0.0, forced) == forced).all()


def test_bench_slab_geometry():
    """CO (C down) on every 4th top site, 1.85 A above its Pt, of a 8-layer Pt(111) slab."""
    slab = BenchSlab(size=8, rattle=0.0).build()
    is_pt = slab.numbers == 78
    assert is_pt.sum() == 8 * 8 * 8 and (slab.numbers == 6).sum() == (slab.numbers == 8).sum() == 4
    carbon, oxygen = np.flatnonzero(slab.numbers == 6), np.flatnonzero(slab.numbers == 8)
    assert np.allclose(slab.positions[oxygen] - slab.positions[carbon], [0, 0, CO_BOND])
    top = slab.positions[is_pt, 2].max()
    assert np.allclose(slab.positions[carbon, 2], top + CO_TOP_SITE_HEIGHT)
    # each C sits straight above a top-layer Pt
    distances = slab.get_all_distances(mic=True)[np.ix_(carbon, np.flatnonzero(is_pt))]
    assert np.allclose(distances.min(axis=1), CO_TOP_SITE_HEIGHT)
    rattled = BenchSlab(size=8).build()
    assert 0.01 < np.std(rattled.positions - slab.positions) < 0.03


def test_paper_preset_has_the_published_sizes():
    configs, _ = bench_configs(DEFAULT_CONFIG, "float32", preset="paper")
    expected = {
        "big": {"l_max": 3, "num_layers": 4, "num_scalar_features": 128,
                "num_tensor_features": 64, "r_max": 7.0},
        "small": {"l_max": 1, "num_layers": 2, "num_scalar_features": 32,
                  "num_tensor_features": 32, "r_max": 7.0},
    }
    for name, sizes in expected.items():
        assert {k: configs[name][k] for k in sizes} == sizes
        assert configs[name]["model_dtype"] == "float32"
        assert configs[name]["_target_"] == "allegro.model.AllegroModel"
        assert configs[name]["avg_num_neighbors"] == 30.0  # ${training_data_stats:...} resolved
    assert configs["moe"]["r_max"] == 7.0
    assert configs["moe"]["experts"]["big"]["num_layers"] == 4


def test_bad_arguments_are_named(tmp_path, capsys):
    structure = ["bench", "--structure", str(tmp_path / "s.xyz")]
    assert main([*structure, "--moe", "moe.nequip.pt2"]) == 2
    assert "give all of --moe --big --small" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*structure, "--preset", "huge"])
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_missing_structure_file_is_named(tmp_path, capsys):
    assert main(["bench", "--structure", str(tmp_path / "none.xyz"), "--eager",
                 "--config", str(TINY_CONFIG), "--out-dir", str(tmp_path)]) != 0
    assert "none.xyz` does not exist" in capsys.readouterr().err


def test_cpu_clock_leaves_out_waiting():
    """A call that waits 0.2 s without computing: wall time counts the wait, CPU time not (the
    time other jobs on a shared machine take from a timed call)."""
    import time

    import torch

    from nequip_moe.benchmarking.speed import time_call

    class Waits(torch.nn.Module):
        def forward(self, data):
            time.sleep(0.2)
            return {"forces": data["pos"]}

    data, cpu = {"pos": torch.zeros(2, 3)}, torch.device("cpu")
    assert time_call(Waits(), data, cpu, "wall") >= 0.2
    assert time_call(Waits(), data, cpu, "cpu") < 0.05


# ---------------------------------------------------------------- preset within a memory budget


def test_over_budget_models_are_extrapolated(tmp_path):
    """With 1 kB per big-expert edge and a budget between the 74- and 130-atom slabs' all-big
    needs, all-big is timed on the 34- and 74-atom slabs and extrapolated to 130 atoms with
    the exponent measured between them; the MoE and the small expert are timed on 130 atoms."""
    import torch

    from nequip_moe.benchmarking.models import prepare_models
    from nequip_moe.benchmarking.options import BenchOptions
    from nequip_moe.benchmarking.preset import budget_rows
    from nequip_moe.benchmarking.structures import bench_slabs
    from nequip_moe.benchmarking.untrained import untrained_checkpoints

    slabs = bench_slabs([2, 3, 4])
    device = torch.device("cpu")
    files = untrained_checkpoints(TINY_CONFIG, slabs[0], tmp_path)
    models = prepare_models(files, True, tmp_path, device, None, log=lambda msg: None)
    edges = [len(neighbor_list("i", a, R_MAX["big"])) for a in slabs]
    per_edge = (1000.0, 1.0)
    budget = 1000.0 * (edges[1] + edges[2]) / 2
    options = BenchOptions(repeats=1, warmup=0)
    (row,) = budget_rows(models, slabs, [0.25], per_edge, budget, options, device, lambda m: None)
    assert row["n_atoms"] == 130 and row["predicted_call_bytes"]["big"] == 1000.0 * edges[2]
    assert set(row["extrapolated"]) == {"big"} and row["times_s"]["big"] is None
    big = row["extrapolated"]["big"]
    assert big["from_atoms"] == [34, 74]
    exponent = np.log(big["times_s"][1] / big["times_s"][0]) / np.log(74 / 34)
    assert big["exponent"] == pytest.approx(exponent)
    assert row["t_big_s"] == pytest.approx(big["times_s"][1] * (130 / 74) ** exponent)
    assert row["t_moe_s"] == row["times_s"]["moe"][0] and row["t_small_s"] == row["times_s"]["small"][0]
    assert row["cost_ratio"] == pytest.approx(row["t_small_s"] / row["t_big_s"])
    # no two smaller structures fit: the error says what to do
    with pytest.raises(ValueError, match=r"add smaller sizes \(e.g. --slabs"):
        budget_rows(models, slabs, [0.25], per_edge, 1000.0 * edges[0] / 2, options, device, print)


# ---------------------------------------------------------------- the GPU script, dry run


def test_gpu_script_dry_run(tmp_path):
    """`benchmarks/run_gpu.sh` with DRY_RUN=1: the GPU run's steps on the CPU (eager, tiny
    slabs); it records the device, the model dtype, atoms/s and the largest system tried."""
    env = {**os.environ, "DRY_RUN": "1", "OUT_DIR": str(tmp_path), "PYTHON": sys.executable,
           "CONFIG": str(TINY_CONFIG)}
    proc = subprocess.run(
        [str(REPO / "benchmarks" / "run_gpu.sh")], env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "bench.json").read_text())
    assert results["machine"]["device"] == "cpu" and results["options"]["eager"]
    assert results["model_dtype"] == {"moe": "float64", "big": "float64", "small": "float64"}
    frames = read(tmp_path / "slabs.xyz", index=":")
    assert sorted({r["n_atoms"] for r in results["rows"]}) == [len(a) for a in frames] == [34, 74]
    for row in results["rows"]:
        for name in ("moe", "big", "small"):
            t = statistics.median(row["times_s"][name])
            assert row["atoms_per_s"][name] == pytest.approx(row["n_atoms"] / t)
    capacity = results["capacity"]
    tried = [2 * 2 * 8 + 2, 3 * 3 * 8 + 2, 4 * 4 * 8 + 2]
    assert capacity["n_atoms_tried"] == tried
    for name in ("moe", "big"):
        # no device limit on a CPU at these sizes: every size tried fits
        assert capacity[name]["largest_fit_atoms"] == tried[-1]
        assert capacity[name]["out_of_memory_atoms"] is None
        assert [c["n_atoms"] for c in capacity[name]["calls"]] == tried
    summary = (tmp_path / "summary.txt").read_text()
    assert "float64" in summary and f"atoms/s at N={tried[1]}" in summary
    assert f"largest system on cpu (tried N = {tried})" in summary
    assert results["memory"]["n_atoms"] == tried[1]


def test_largest_fit_stops_at_the_first_out_of_memory():
    """A model that runs out of device memory above 50 atoms (as CUDA raises it) fits the
    34-atom slab, not the 74-atom one; the search stops there."""
    import torch

    from nequip_moe.benchmarking.capacity import largest_fit
    from nequip_moe.benchmarking.models import BenchModel
    from nequip_moe.benchmarking.structures import bench_slabs

    class FitsUpTo50(torch.nn.Module):
        def forward(self, data):
            if data["pos"].shape[0] > 50:
                raise torch.OutOfMemoryError("CUDA out of memory (test)")
            return {"forces": torch.zeros_like(data["pos"])}

    model = BenchModel("big", FitsUpTo50(), {"r_max": "3.0", "type_names": "C O Pt"}, "big.pt2")
    slabs = bench_slabs([4, 2, 3])
    result = largest_fit(model, slabs, 0.25, torch.device("cpu"), log=lambda msg: None)
    assert result["largest_fit_atoms"] == 34 and result["out_of_memory_atoms"] == 74
    assert [c["n_atoms"] for c in result["calls"]] == [34]


# ---------------------------------------------------------------- projection to many ranks


def test_uniform_cost_on_a_divisible_lattice_is_balanced():
    grid = np.stack(np.meshgrid(*[np.arange(8) + 0.5] * 3, indexing="ij"), -1).reshape(-1, 3)
    weights = np.ones(len(grid))
    assert project_ranks.processor_grid(8, (8, 8, 8)) == (2, 2, 2)
    loads = project_ranks.grid_loads(grid, weights, (8, 8, 8), 8)
    assert loads.tolist() == [64.0] * 8 and project_ranks.imbalance(loads) == 1.0
    assert project_ranks.imbalance(project_ranks.rcb_loads(grid, weights, 8)) == 1.0
    # a thin slab is not cut across its thickness
    assert project_ranks.processor_grid(16, (100, 100, 10))[2] == 1


@pytest.mark.parametrize("geometry", project_ranks.GEOMETRIES)
def test_weighted_partition_beats_equal_volumes(geometry):
    positions, big, box = project_ranks.slab(20_000, geometry)
    weights = np.where(big, 50.0, 1.0)
    for n_ranks in (8, 64):
        grid = project_ranks.grid_loads(positions, weights, box, n_ranks)
        rcb = project_ranks.rcb_loads(positions, weights, n_ranks)
        assert len(rcb) == n_ranks
        assert grid.sum() == pytest.approx(weights.sum()) and rcb.sum() == pytest.approx(weights.sum())
        assert rcb.max() <= grid.max()
        # each bisection misses its target by at most one atom's weight
        assert rcb.max() <= weights.sum() / n_ranks + np.log2(n_ranks) * weights.max()
    assert big.any() and not big.all()


def test_composed_config_keeps_its_own_agreement_terms():
    """A config with a Hydra defaults list is composed like `nequip-train` composes it; a
    co-training loss is used as it is, a plain one gets both agreement terms."""
    from nequip_moe.benchmarking.training import cotrain_loss

    _, cotrain = bench_configs(CONFIGS / "pt_co_cotrain.yaml")
    _, plain = bench_configs(CONFIGS / "pt_co_moe.yaml")
    names = [m["name"] for m in cotrain["loss"]["extra_metrics"]]
    assert names == ["energy_agreement", "force_agreement"]
    assert cotrain_loss(cotrain["loss"], ["big", "small"]) == cotrain["loss"]
    added = cotrain_loss(plain["loss"], ["big", "small"])["extra_metrics"]
    assert [m["field"]["field"] for m in added] == ["atomic_energy", "forces"]
    assert "extra_metrics" not in plain["loss"]  # the config itself is left as it was
