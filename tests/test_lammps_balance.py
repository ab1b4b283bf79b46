"""The load balancing that `lammps_input` writes, in real LAMMPS under `mpirun -np 2` and `-np 4`.

A Pt slab whose left 30 % (along x) belongs to the big expert, 8.3 times as costly per atom as
the small one. The partitioning depends on the weights only, so the MoE pair style is replaced
by a cheap `lj/cut`. Each rank's weighted load is recomputed here from a dump of the atoms'
owners (`proc`) and types, independently of LAMMPS' own imbalance factor.
"""

import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
from ase.build import fcc111

from nequip_moe.integrations.lammps_data import write_lammps_data
from nequip_moe.integrations.lammps_input import BALANCE_FIX, lammps_input

from conftest import require_lammps
from test_assign_cli import TABLE

BIN = pathlib.Path(sys.executable).parent
MPIRUN, LMP = BIN / "mpirun", BIN / "lmp"
COST = {"big": 8.3, "small": 1.0}
PAIR_LINES = "pair_style      allegro\npair_coeff      * * moe.nequip.pt2 C O Pt Pt_small"
CHEAP_PAIR = "pair_style      lj/cut 5.0\npair_coeff      * * 0.01 2.5"
NUM_STEPS = 10

require_lammps(MPIRUN.name, LMP.name)


@pytest.fixture(scope="module")
def slab_data(tmp_path_factory):
    """Pt(111) 12x4x6 slab (288 atoms), slightly rattled; the big expert on x < 0.3 L_x."""
    slab = fcc111("Pt", (12, 4, 6), vacuum=8.0, a=3.92, orthogonal=True)
    slab.rattle(0.05, seed=1)
    fractional_x = slab.get_scaled_positions()[:, 0]
    expert = np.where(fractional_x < 0.3, 0, 1)
    path = tmp_path_factory.mktemp("balance") / "slab.data"
    write_lammps_data(path, slab, expert, TABLE)
    return path


def run_balanced(tmp_path, data_file, num_ranks, cost_weights, startup_balance=True):
    """The written input with lj/cut, run for a few steps on ``num_ranks`` ranks.

    Returns the start-up `balance` factor (or None), the last `f_nequip_moe_balance` and
    `f_nequip_moe_balance[3]`, and the weighted imbalance recomputed from the dump at step 0.
    """
    script = lammps_input(
        "moe.nequip.pt2", TABLE, data_file, cost_weights=cost_weights, num_steps=NUM_STEPS
    )
    assert PAIR_LINES in script
    script = script.replace(PAIR_LINES, CHEAP_PAIR)
    if not startup_balance:
        script = re.sub(r"\nbalance .*\n", "\n", script)
    script = script.replace(
        "thermo          100",
        f"thermo          {NUM_STEPS}\nthermo_style custom step f_{BALANCE_FIX} "
        f"f_{BALANCE_FIX}[3]\ndump owners all custom {NUM_STEPS} owners.txt id type proc",
    )
    (tmp_path / "in.lammps").write_text(script)
    proc = subprocess.run(
        [str(MPIRUN), "-np", str(num_ranks), str(LMP), "-in", "in.lammps", "-log", "log.lammps", "-nocite"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    log = (tmp_path / "log.lammps").read_text()
    startup = re.findall(r"initial/final imbalance factor\s*=\s*(\S+)\s+(\S+)", log)
    rows = [line.split() for line in log.split("Step")[-1].splitlines()[1:]]
    last = next([float(v) for v in row] for row in rows if row[0] == str(NUM_STEPS))

    # the dump at step 0: owner and type of each atom -> weighted load of each rank
    lines = (tmp_path / "owners.txt").read_text().splitlines()
    atoms = np.array([line.split() for line in lines[9 : 9 + int(lines[3])]], dtype=np.int64)
    type_cost = np.array([COST[expert] for expert in TABLE.experts])
    load = np.bincount(atoms[:, 2], weights=type_cost[atoms[:, 1] - 1], minlength=num_ranks)
    assert len(load) == num_ranks
    return (
        float(startup[0][1]) if startup else None,
        last[1],
        last[2],
        load.max() / load.mean(),
    )


@pytest.mark.parametrize("num_ranks", [2, 4])
def test_weights_balance_the_moe_work(tmp_path, slab_data, num_ranks):
    # the input as written: start-up `balance`, then `fix balance`
    (tmp_path / "weighted").mkdir()
    startup, _, _, weighted = run_balanced(tmp_path / "weighted", slab_data, num_ranks, COST)
    print(f"-np {num_ranks}: weighted imbalance with weights {weighted:.4f} (LAMMPS: {startup})")
    assert weighted <= 1.10
    assert startup == pytest.approx(weighted, abs=1e-4)

    # the same input without cost weights balances atom counts: the MoE work is not balanced
    (tmp_path / "counts").mkdir()
    _, _, _, unweighted = run_balanced(tmp_path / "counts", slab_data, num_ranks, None)
    print(f"-np {num_ranks}: weighted imbalance balancing atom counts {unweighted:.4f}")
    assert unweighted >= 1.3

    # `fix balance` alone: the factor it reports after rebalancing, and before
    (tmp_path / "fix").mkdir()
    _, after, before, recomputed = run_balanced(
        tmp_path / "fix", slab_data, num_ranks, COST, startup_balance=False
    )
    print(f"-np {num_ranks}: fix balance: {before:.4f} -> {after:.4f}")
    assert after <= 1.10 and before >= 1.3
    assert after == pytest.approx(recomputed, abs=1e-4)
