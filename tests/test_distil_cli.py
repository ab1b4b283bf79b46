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
