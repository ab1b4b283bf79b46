"""Training-step cost through nequip's own training module.

One step = ``NequIPLightningModule.training_step`` (forward with forces, nequip's loss from the
training config), backward, and the module's ``optimizer_step`` (the config's optimizer; EMA
update where the module has one), on the same batch for:

- ``big``: the high-fidelity expert alone;
- ``moe``: the MoE with the config's loss;
- ``moe_cotrain``: the MoE co-trained: the loss plus the agreement terms of
  ``nequip_moe.train`` (per-atom energies and whole-frame forces of both experts on the shared
  atoms marked by ``nequip_moe.data.SharedEnvironments``);
- ``moe_staged``: the staged route: the same co-training loss with the high-fidelity expert
  frozen (``frozen_experts`` of ``MoEModel``), so only the low-fidelity expert trains.
"""

import copy
import statistics
import time
import warnings
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

import ase
from ase.calculators.singlepoint import SinglePointCalculator
from nequip.data import AtomicDataDict

from nequip_moe.keys import SHARED_KEY
from nequip_moe.benchmarking.models import BenchModel
from nequip_moe.benchmarking.speed import high_fidelity_mask, synchronize, time_interleaved
from nequip_moe.benchmarking.untrained import training_module

STEPS = ("big", "moe", "moe_cotrain", "moe_staged")


def checkpoint_module_config(path) -> Dict:
    """The ``training_module`` config (model included) that a nequip checkpoint was built from."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    return copy.deepcopy(checkpoint["hyper_parameters"]["info_dict"]["training_module"])


def with_labels(atoms: ase.Atoms) -> ase.Atoms:
    """``atoms`` with its own energy, forces and stress, or zeros where it has none (the
    values do not change the cost of a step)."""
    atoms = atoms.copy()
    results = dict(getattr(atoms.calc, "results", None) or {})
    results.setdefault("energy", 0.0)
    results.setdefault("forces", np.zeros((len(atoms), 3)))
    results.setdefault("stress", np.zeros(6))
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def training_batch(
    model: BenchModel,
    frames: Sequence[ase.Atoms],
    fraction: float,
    device: torch.device,
    shared: Optional[torch.nn.Module] = None,
) -> AtomicDataDict.Type:
    """Labelled frames batched with ``model``'s atom types and neighbour list.

    Args:
        model: the model the batch is for
        frames: structures (labels of zero where they have none)
        fraction: target high-fidelity fraction of each frame (MoE only)
        device: device of the batch
        shared: transform adding the per-atom ``shared`` marks of co-training (default: none);
            with it, the neighbour list holds every pair within ``r_max``, as co-training needs
            (every expert evaluated on other experts' atoms)
    """
    graphs = []
    for atoms in frames:
        atoms = with_labels(atoms)
        mask = high_fidelity_mask(atoms, fraction, model.forced_high_fidelity(atoms))
        data = model.inputs(atoms, mask, torch.device("cpu"), uniform_cutoff=shared is not None)
        if shared is not None:
            data = shared(data)
        graphs.append(AtomicDataDict.to_(data, device))
    return AtomicDataDict.batched_from_list(graphs)


def cotrain_loss(loss: Dict, experts: Sequence[str]) -> Dict:
    """``loss`` with the agreement terms of co-training added (energy and force agreement),
    unless it has agreement terms already (a co-training config)."""
    loss = copy.deepcopy(loss)
    loss.setdefault("extra_metrics", [])
    if any("ExpertAgreement" in str(m.get("field")) for m in loss["extra_metrics"]):
        return loss
    for name, field, coeff in (
        ("energy_agreement", AtomicDataDict.PER_ATOM_ENERGY_KEY, 1.0),
        ("force_agreement", AtomicDataDict.FORCE_KEY, 5.0),
    ):
        loss["extra_metrics"].append(
            {
                "name": name,
                "field": {"_target_": "nequip_moe.train.ExpertAgreement", "field": field,
                          "experts": list(experts)},
                "metric": {"_target_": "nequip_moe.train.EmptySafeMSE"},
                "coeff": coeff,
            }
        )
    return loss


def timed_step(module, batch: AtomicDataDict.Type, device: torch.device):
    """A timed call: nequip's ``training_step``, backward and the module's optimizer step."""
    module = module.to(device).train()
    optimizer = module.configure_optimizers()
    if isinstance(optimizer, dict):
        optimizer = optimizer["optimizer"]

    def step() -> float:
        synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # `self.log` outside a Trainer
            loss = module.training_step(batch, 0)
        loss.backward()
        module.optimizer_step(0, 0, optimizer)
        synchronize(device)
        return time.perf_counter() - start

    return step


def training_section(
    checkpoints: Dict[str, str],
    models: Dict[str, BenchModel],
    frames: List[ase.Atoms],
    fraction: float,
    repeats: int,
    warmup: int,
    device: torch.device,
    shared_host: Optional[str] = None,
) -> Dict:
    """Training-step times of ``STEPS`` on one batch of ``frames``.

    Args:
        checkpoints: ``{moe, big}`` nequip checkpoints (their training module configs are used)
        models: ``{moe, big}`` the loaded models (atom types and neighbour lists of the batches)
        frames: the batch's structures
        fraction: target high-fidelity fraction of each frame
        repeats: timed steps per variant (median reported)
        warmup: untimed steps first
        device: training device
        shared_host: host element of the bulk-like shared atoms (default: the low-fidelity expert's first element)
    """
    from nequip_moe.data import SharedEnvironments

    moe = models["moe"]
    hf, lf = moe.experts
    table = moe.table
    if shared_host is None:
        shared_host = next(el for el, ex in zip(table.elements, table.experts) if ex == lf)
    configs = {name: checkpoint_module_config(checkpoints[name]) for name in ("moe", "big")}
    moe_config = configs["moe"]
    cotrain = {**moe_config, "loss": cotrain_loss(moe_config["loss"], table.expert_names)}
    staged_model = {**moe_config["model"], "frozen_experts": [hf]}
    batch = training_batch(moe, frames, fraction, device)
    shared_batch = training_batch(
        moe, frames, fraction, device, shared=SharedEnvironments(host=shared_host)
    )
    steps = {
        "big": timed_step(
            training_module(configs["big"], configs["big"]["model"]),
            training_batch(models["big"], frames, fraction, device),
            device,
        ),
        "moe": timed_step(training_module(moe_config, moe_config["model"]), batch, device),
        "moe_cotrain": timed_step(training_module(cotrain, cotrain["model"]), shared_batch, device),
        "moe_staged": timed_step(training_module(cotrain, staged_model), shared_batch, device),
    }
    times = time_interleaved(steps, repeats, warmup)
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        "num_frames": len(frames),
        "n_atoms": sum(len(a) for a in frames),
        "n_shared_atoms": int(shared_batch[SHARED_KEY].sum()),
        "shared_host": shared_host,
        "hf_fraction_target": fraction,
        **{f"{name}_step_s": t for name, t in median.items()},
        **{f"{name}_over_big": median[name] / median["big"] for name in STEPS[1:]},
        "times_s": times,
    }
