"""Untrained models of an MoE training config, written as nequip checkpoints.

The config's ``training_module`` is resolved with ``${training_data_stats:...}`` set to
``UNTRAINED_STATS`` through an OmegaConf resolver, as ``nequip-train`` resolves it to the
dataset's statistics (nequip's own resolvers resolve the rest). The MoE and each of its two
experts alone are written as checkpoints, so that they load, compile (``nequip-compile``) and
train like any trained model.
"""

import pathlib
from typing import Dict, Optional, Tuple

import numpy as np
import torch

import ase

from nequip_moe.composite import CompositeTypeTable
from nequip_moe.keys import EXPERT_KEY
from nequip_moe.benchmarking.models import expert_labels, expert_pair, forced_high_fidelity
from nequip_moe.benchmarking.options import MODEL_NAMES, PRESETS

# dataset statistics that untrained models get in place of `${training_data_stats:...}`
UNTRAINED_STATS = {
    "num_neighbors_mean": 30.0,
    "per_atom_energy_mean": 0.0,
    "forces_rms": 1.0,
    "total_energy_std": 1.0,
}

def _untrained_stat(name: str):
    if name not in UNTRAINED_STATS:
        raise ValueError(
            f"no untrained stand-in for `${{training_data_stats:{name}}}`; known: "
            f"{sorted(UNTRAINED_STATS)}"
        )
    return UNTRAINED_STATS[name]


def untrained_training_module(path) -> Dict:
    """The ``training_module`` of a training config, resolved with ``UNTRAINED_STATS``.

    The config is composed by Hydra as ``nequip-train`` composes it (defaults lists included);
    nequip's own resolvers (registered when ``nequip`` is imported) resolve everything else.

    Args:
        path: training config (YAML)
    """
    import nequip  # noqa: F401  (registers nequip's OmegaConf resolvers)
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    path = pathlib.Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"training config `{path}` does not exist")
    OmegaConf.register_new_resolver("training_data_stats", _untrained_stat, replace=True)
    with initialize_config_dir(str(path.parent), version_base="1.3"):
        config = compose(path.name.removesuffix(".yaml"))
    if "training_module" not in config or "model" not in config.training_module:
        raise ValueError(f"`{path}` has no training_module.model: pass an MoE training config")
    return OmegaConf.to_container(config.training_module, resolve=True)


def bench_configs(
    path,
    model_dtype: Optional[str] = None,
    hf_expert: Optional[str] = None,
    preset: Optional[str] = None,
) -> Tuple[Dict[str, Dict], Dict]:
    """Untrained model configs ``{moe, big, small}`` and the training module config.

    The MoE is ``training_module.model``; ``big`` and ``small`` are its high- and low-fidelity
    experts built alone on the element types, at the MoE ``r_max`` unless they set their own.

    Args:
        path: training config (YAML) with an ``MoEModel`` of two experts at ``training_module.model``
        model_dtype: overrides the config's ``model_dtype``
        hf_expert: name of the high-fidelity expert (default: the first expert)
        preset: name in ``PRESETS``: replaces the experts' sizes (the MoE ``r_max`` grows to theirs)
    """
    module = untrained_training_module(path)
    moe = module["model"]
    if model_dtype is not None:
        moe["model_dtype"] = model_dtype
    hf, lf = expert_pair(list(moe["experts"]), hf_expert)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"unknown preset `{preset}`; known: {sorted(PRESETS)}")
        for expert, sizes in zip((hf, lf), PRESETS[preset]):
            moe["experts"][expert].update(sizes)
        moe["r_max"] = max([moe["r_max"]] + [s["r_max"] for s in PRESETS[preset]])
    table = CompositeTypeTable.from_config(
        moe["type_names"], moe["composite_types"], list(moe["experts"])
    )
    configs = {"moe": moe}
    for name, expert in (("big", hf), ("small", lf)):
        alone = dict(moe["experts"][expert])
        alone.setdefault("r_max", moe["r_max"])
        alone.setdefault("type_names", table.element_names)
        alone.update(seed=moe["seed"], model_dtype=moe["model_dtype"])
        configs[name] = alone
    return configs, module


def data_config(model_config: Dict, structure_file) -> Dict:
    """nequip data config that reads ``structure_file`` into ``model_config``'s inputs.

    ``nequip-compile`` takes its example input from a checkpoint's training data.
    """
    r_max = float(model_config["r_max"])
    names = list(model_config["type_names"])
    if "composite_types" in model_config:
        mapper = {
            "_target_": "nequip_moe.data.CompositeTypeMapper",
            "type_names": names,
            "composite_types": model_config["composite_types"],
            "experts": list(model_config["experts"]),
        }
    else:
        mapper = {
            "_target_": "nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper",
            "model_type_names": names,
        }
    structure_file = str(pathlib.Path(structure_file).resolve())
    return {
        "_target_": "nequip.data.datamodule.ASEDataModule",
        "seed": 0,
        "train_file_path": structure_file,
        "val_file_path": structure_file,
        "include_keys": [EXPERT_KEY],
        "transforms": [
            mapper,
            {"_target_": "nequip.data.transforms.NeighborListTransform", "r_max": r_max},
        ],
    }


def training_module(module_config: Dict, model_config: Dict, info_dict: Optional[Dict] = None):
    """nequip ``NequIPLightningModule`` (or the config's subclass) around ``model_config``.

    Args:
        module_config: resolved ``training_module`` config (its loss, optimizer, ...)
        model_config: the model to put in it
        info_dict: what nequip keeps beside the module in checkpoints (default: minimal)
    """
    from hydra.utils import instantiate

    config = {**module_config, "model": model_config}
    return instantiate(
        config,
        _recursive_=False,
        _convert_="all",
        num_datasets={"train": 1, "val": 0, "test": 0, "predict": 0},
        info_dict=info_dict or {},
    )


def write_checkpoint(module_config: Dict, model_config: Dict, structure_file, path) -> str:
    """Write an untrained model as a nequip checkpoint (what ``nequip-train`` would save at step 0).

    Args:
        module_config: resolved ``training_module`` config
        model_config: the model
        structure_file: extxyz example input for ``nequip-compile`` (with ``expert`` labels for MoEs)
        path: checkpoint file
    """
    import lightning
    from nequip.utils import get_current_code_versions
    from nequip.utils.global_state import get_latest_global_state

    info_dict = {
        "versions": get_current_code_versions(verbose=False),
        "data": data_config(model_config, structure_file),
        "trainer": {},
        "global_options": get_latest_global_state(),
        "runs": ["train"],
        "training_module": {**module_config, "model": model_config},
    }
    module = training_module(module_config, model_config, info_dict)
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": lightning.__version__,
        },
        path,
    )
    return str(path)


def compile_example(atoms: ase.Atoms, size: int = 12) -> ase.Atoms:
    """The ``size`` highest atoms of ``atoms`` in its cell: the example input that
    ``nequip-compile`` runs eagerly, small enough for any model size (an eager paper-size
    Allegro call needs about 1 MB per edge)."""
    top = np.sort(np.argsort(-atoms.positions[:, 2], kind="stable")[:size])
    return ase.Atoms(
        numbers=atoms.numbers[top], positions=atoms.positions[top], cell=atoms.cell, pbc=atoms.pbc
    )


def untrained_checkpoints(
    config_path,
    atoms: ase.Atoms,
    out_dir,
    model_dtype: Optional[str] = None,
    hf_expert: Optional[str] = None,
    preset: Optional[str] = None,
) -> Dict[str, str]:
    """Checkpoints ``{moe, big, small}`` of the untrained models of a training config.

    Args:
        config_path: MoE training config
        atoms: a structure whose highest atoms (``compile_example``) become the checkpoints' example data
        out_dir: where ``{moe,big,small}.ckpt`` and their example structure go
        model_dtype: overrides the config's ``model_dtype``
        hf_expert: the high-fidelity expert (default: the MoE's first)
        preset: expert sizes from ``PRESETS``
    """
    from ase.io import write

    configs, module = bench_configs(config_path, model_dtype, hf_expert, preset)
    moe = configs["moe"]
    table = CompositeTypeTable.from_config(
        moe["type_names"], moe["composite_types"], list(moe["experts"])
    )
    experts = expert_pair(table.expert_names, hf_expert)
    example = compile_example(atoms)
    high_fidelity = (np.arange(len(example)) % 2 == 0) | forced_high_fidelity(
        table, experts[1], example
    )
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    example.arrays[EXPERT_KEY] = expert_labels(table, experts, high_fidelity)
    write(out_dir / "example_structure.xyz", example, format="extxyz")
    return {
        name: write_checkpoint(
            module, configs[name], out_dir / "example_structure.xyz", out_dir / f"{name}.ckpt"
        )
        for name in MODEL_NAMES
    }
