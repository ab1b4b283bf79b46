"""`nequip-moe distil`: a dataset's wholly low-fidelity (bulk) frames relabelled by the
high-fidelity model, every other frame unchanged; bad inputs refused with nothing written."""

import numpy as np
import pytest
from ase.io import read, write

from nequip_moe.scripts.cli import main
from nequip_moe.validation.models import plain_calculator

from conftest import CONFIGS


@pytest.fixture(scope="module")
def big_model(tmp_path_factory, pt_co_frames_file):
    """An untrained plain model (tiny_moe's big expert alone), as a checkpoint."""
    from nequip_moe.benchmarking.untrained import untrained_checkpoints

    out = tmp_path_factory.mktemp("distil_model")
    return untrained_checkpoints(CONFIGS / "tiny_moe.yaml", read(pt_co_frames_file, 0), out)["big"]


def test_bulk_frames_get_the_models_labels(tmp_path, pt_co_frames_file, big_model, capsys):
    out = tmp_path / "distilled.xyz"
    assert main(["distil", str(pt_co_frames_file), "--model", str(big_model), "--out", str(out)]) == 0
    assert "2 of 8 frames relabelled" in capsys.readouterr().out
    before, after = read(pt_co_frames_file, ":"), read(out, ":")
    calc = plain_calculator(big_model)
    relabelled = 0
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old.arrays["expert"], new.arrays["expert"])
        np.testing.assert_array_equal(old.positions, new.positions)
        if (old.arrays["expert"] == 1).all():
            relabelled += 1
            probe = old.copy()
            probe.calc = calc
            assert new.get_potential_energy() == pytest.approx(probe.get_potential_energy(), abs=1e-6)
            np.testing.assert_allclose(new.get_forces(), probe.get_forces(), atol=1e-6)
            np.testing.assert_allclose(new.get_stress(), probe.get_stress(), atol=1e-6)
            # an untrained model is far from EMT: the labels really changed
            assert abs(new.get_potential_energy() - old.get_potential_energy()) > 1e-3
        else:
            assert new.get_potential_energy() == pytest.approx(old.get_potential_energy(), abs=1e-8)
            np.testing.assert_allclose(new.get_forces(), old.get_forces(), atol=1e-8)
    assert relabelled == 2


def test_all_frames_get_the_models_labels(tmp_path, pt_co_frames_file, big_model, capsys):
    out = tmp_path / "distilled.xyz"
    argv = ["distil", str(pt_co_frames_file), "--model", str(big_model), "--out", str(out), "--frames", "all"]
    assert main(argv) == 0
    assert "8 of 8 frames relabelled (all)" in capsys.readouterr().out
    calc = plain_calculator(big_model)
    for old, new in zip(read(pt_co_frames_file, ":"), read(out, ":")):
        np.testing.assert_array_equal(old.arrays["expert"], new.arrays["expert"])
        probe = old.copy()
        probe.calc = calc
        assert new.get_potential_energy() == pytest.approx(probe.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(new.get_forces(), probe.get_forces(), atol=1e-6)


@pytest.mark.parametrize("case", ["no_expert", "unknown_element", "absent_label"])
def test_bad_inputs_write_nothing(tmp_path, pt_co_frames_file, big_model, case, capsys):
    frames = read(pt_co_frames_file, ":")
    args = []
    message = {
        "no_expert": "no per-atom `expert` array",
        "unknown_element": "the model has no type for ['Au']",
        "absent_label": "--label 5: no atom",
    }[case]
    if case == "no_expert":
        del frames[3].arrays["expert"]
    elif case == "unknown_element":
        frames[-1].numbers[0] = 79
    else:
        args = ["--label", "5"]
    source = tmp_path / "frames.xyz"
    write(source, frames)
    out = tmp_path / "distilled.xyz"
    out.write_text("kept\n")
    assert main(["distil", str(source), "--model", str(big_model), "--out", str(out), *args]) == 2
    assert message in capsys.readouterr().err
    assert out.read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["distilled.xyz", "frames.xyz"]


def test_added_bulk_cells_span_the_strains_with_the_models_labels(tmp_path, pt_co_frames_file, big_model, capsys):
    """``--cells N --bulk``: N strained copies of the bulk crystal, labelled by the model, every
    atom on the low-fidelity expert; strains spread over the whole range."""
    from ase.build import bulk

    bulk_file = tmp_path / "bulk.xyz"
    write(bulk_file, bulk("Pt", "fcc", a=3.92, cubic=True))
    out = tmp_path / "distilled.xyz"
    args = ["distil", str(pt_co_frames_file), "--model", str(big_model), "--out", str(out),
            "--cells", "6", "--bulk", str(bulk_file), "--strain", "0.05"]
    assert main(args) == 0
    assert "6 strained bulk cells" in capsys.readouterr().out
    frames = read(out, ":")
    before = read(pt_co_frames_file, ":")
    assert len(frames) == len(before) + 6
    cells = frames[len(before):]
    calc = plain_calculator(big_model)
    v0 = 3.92 ** 3 / 4
    strains = sorted((a.get_volume() / len(a) / v0) ** (1 / 3) - 1 for a in cells)
    assert strains[0] < -0.03 and strains[-1] > 0.03  # one per sixth of [-5 %, 5 %], +-1 % shear
    for atoms in cells:
        assert (atoms.arrays["expert"] == 1).all() and atoms.cell.lengths().min() >= 4.0
        probe = atoms.copy()
        probe.calc = calc
        assert atoms.get_potential_energy() == pytest.approx(probe.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(atoms.get_forces(), probe.get_forces(), atol=1e-6)
    # the same seed gives the same cells; a missing bulk file is refused with nothing written
    again = tmp_path / "again.xyz"
    assert main([*args[:5], str(again), *args[6:]]) == 0
    np.testing.assert_array_equal(read(again, -1).positions, frames[-1].positions)
    missing = tmp_path / "missing.xyz"
    assert main([*args[:5], str(missing), "--cells", "2"]) == 2
    assert "needs" in capsys.readouterr().err and not missing.exists()
