"""Speed, scaling, memory and training-cost benchmark of an MoE potential against its experts.

The MoE, its high-fidelity expert alone ("big") and its low-fidelity expert alone ("small") are
timed on the same Pt(111) + CO slabs, in the same process, as compiled AOTInductor models by
default. At high-fidelity fraction ``f`` the MoE speed-up ``t_big / t_moe`` is compared with the
ideal ``1 / (f + (1 - f) c)`` of the cost model in the design notes, where ``c = t_small / t_big``
is measured at the same size: the efficiency ``speed-up / ideal`` shows what routing costs.
High-fidelity atoms (adsorbates, top layers) have fewer neighbours than bulk ones, so each row
also gives the ideal with the experts' shares of the edges in place of atom fractions
(``ideal_speedup_edges``, ``efficiency_edges``): the tighter yardstick of routing overhead.
"""

import dataclasses
import datetime
import json
import os
import pathlib
import platform
import re
import statistics
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import ase
from ase.build import fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import NeighborListTransform
from nequip.nn.embedding.utils import cutoff_str_to_fulldict
from nequip.nn.graph_model import PER_EDGE_TYPE_CUTOFF_KEY

from nequip_moe._composite import CompositeTypeTable
from nequip_moe._keys import SHARED_KEY
from nequip_moe.integrations.model_files import is_compiled, load_model

# the example training config, where the package is used from its source tree
EXAMPLE_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "pt_co_moe.yaml"

# dataset statistics that untrained example models get in place of `${training_data_stats:...}`
UNTRAINED_STATS = {
    "num_neighbors_mean": 30.0,
    "per_atom_energy_mean": 0.0,
    "forces_rms": 1.0,
}
_STATS_INTERPOLATION = re.compile(r"^\$\{training_data_stats:(\w+)\}$")

# the three models of a benchmark: the MoE and each of its two experts alone
MODEL_NAMES = ("moe", "big", "small")

# glibc allocations from this size on are mmapped and returned to the system when freed
# (a fixed threshold turns off glibc's adaptive one, which keeps freed tensors resident)
_MMAP_THRESHOLD = 1 << 16

# Pt(111) + CO geometry (Angstrom)
PT_LATTICE = 3.92
CO_HEIGHT = 1.85
CO_BOND = 1.15
SLAB_VACUUM = 6.0


# ---------------------------------------------------------------------------- structures


@dataclasses.dataclass(frozen=True)
class SlabSpec:
    """A Pt(111) slab with CO on top sites, rebuilt identically from these numbers.

    Args:
        size: surface atoms along each in-plane direction (``size x size`` per layer)
        layers: Pt layers
        co_spacing: one CO on every ``co_spacing``-th top site along both directions
        rattle: standard deviation of random displacements (Angstrom)
        seed: seed of the displacements
    """

    size: int
    layers: int = 8
    co_spacing: int = 4
    rattle: float = 0.02
    seed: int = 0

    def build(self) -> ase.Atoms:
        slab = fcc111(
            "Pt", (self.size, self.size, self.layers), vacuum=SLAB_VACUUM, a=PT_LATTICE
        )
        top = np.flatnonzero(slab.get_tags() == 1)  # x runs fastest within a layer
        on_grid = [
            site
            for k, site in enumerate(top)
            if (k % self.size) % self.co_spacing == 0
            and (k // self.size) % self.co_spacing == 0
        ]
        for site in on_grid:
            carbon = slab.positions[site] + [0.0, 0.0, CO_HEIGHT]
            slab += ase.Atoms("CO", positions=[carbon, carbon + [0.0, 0.0, CO_BOND]])
        slab.pbc = True
        rng = np.random.default_rng(self.seed)
        slab.positions += rng.normal(0.0, self.rattle, slab.positions.shape)
        return slab


def high_fidelity_mask(
    atoms: ase.Atoms, fraction: float, forced: np.ndarray
) -> np.ndarray:
    """Atoms given to the high-fidelity expert: the ``forced`` ones, then the highest ones
    (adsorbates, top layers) until ``fraction`` of all atoms is reached.

    Args:
        atoms: the structure
        fraction: target high-fidelity fraction in ``[0, 1]``
        forced: boolean mask of atoms that must be high fidelity (elements the low-fidelity expert has no composite type for)
    """
    mask = forced.copy()
    missing = int(round(fraction * len(atoms))) - int(forced.sum())
    if missing > 0:
        by_height = np.argsort(-atoms.positions[:, 2], kind="stable")
        mask[by_height[~forced[by_height]][:missing]] = True
    return mask


# ---------------------------------------------------------------------------- models


@dataclasses.dataclass
class BenchModel:
    """A model under benchmark and what it needs to build its inputs.

    Args:
        name: one of ``MODEL_NAMES``
        model: maps an ``AtomicDataDict`` to outputs including forces
        metadata: model metadata (string values)
        source: how another process rebuilds the model: ``{"path": ...}`` or ``{"config": ...}``
        compiled: whether ``model`` is a compiled AOTInductor model
        experts: for the MoE, the (high-fidelity, low-fidelity) expert names
    """

    name: str
    model: torch.nn.Module
    metadata: Dict[str, str]
    source: Dict
    compiled: bool
    experts: Optional[Tuple[str, str]] = None

    @property
    def r_max(self) -> float:
        return float(self.metadata["r_max"])

    @property
    def type_names(self) -> List[str]:
        return self.metadata["type_names"].split()

    @property
    def per_edge_type_cutoff(self) -> Optional[Dict[str, Dict[str, float]]]:
        text = self.metadata.get(PER_EDGE_TYPE_CUTOFF_KEY)
        return None if text is None else cutoff_str_to_fulldict(text, self.type_names)

    def forced_high_fidelity(self, atoms: ase.Atoms) -> np.ndarray:
        """Atoms whose element has no low-fidelity composite type (none for single experts)."""
        if self.experts is None:
            return np.zeros(len(atoms), dtype=bool)
        table = CompositeTypeTable.from_metadata(self.metadata)
        lf_elements = {el for el, ex in zip(table.elements, table.experts) if ex == self.experts[1]}
        return np.array([s not in lf_elements for s in atoms.get_chemical_symbols()])

    def atom_types(self, atoms: ase.Atoms, high_fidelity: np.ndarray) -> np.ndarray:
        """Type index of every atom: its element (single experts) or composite type (MoE)."""
        symbols = atoms.get_chemical_symbols()
        if self.experts is None:
            names = symbols
        else:
            table = CompositeTypeTable.from_metadata(self.metadata)
            names = [
                table.composite_type(s, self.experts[0] if hf else self.experts[1])
                for s, hf in zip(symbols, high_fidelity)
            ]
        missing = sorted(set(names) - set(self.type_names))
        if missing:
            raise ValueError(f"model `{self.name}` has no type for {missing}")
        return np.array([self.type_names.index(n) for n in names])

    def inputs(
        self, atoms: ase.Atoms, high_fidelity: np.ndarray, device: torch.device
    ) -> AtomicDataDict.Type:
        """Graph of ``atoms`` with this model's atom types and neighbour list (its cutoffs)."""
        data = from_ase(atoms)
        data[AtomicDataDict.ATOM_TYPE_KEY] = torch.as_tensor(
            self.atom_types(atoms, high_fidelity), dtype=torch.long
        )
        data = NeighborListTransform(
            r_max=self.r_max,
            per_edge_type_cutoff=self.per_edge_type_cutoff,
            type_names=self.type_names,
        )(data)
        return AtomicDataDict.to_(data, device)


def _replace_stats(node):
    """Replace ``${training_data_stats:NAME}`` by ``UNTRAINED_STATS[NAME]`` throughout a config."""
    if isinstance(node, dict):
        return {k: _replace_stats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_replace_stats(v) for v in node]
    match = _STATS_INTERPOLATION.match(node) if isinstance(node, str) else None
    if match is None:
        return node
    if match.group(1) not in UNTRAINED_STATS:
        raise ValueError(
            f"no untrained stand-in for `{node}`; known: {sorted(UNTRAINED_STATS)}"
        )
    return UNTRAINED_STATS[match.group(1)]


def configs_from_training_config(
    path, model_dtype: Optional[str] = None, hf_expert: Optional[str] = None
) -> Dict[str, Dict]:
    """Untrained model configs ``{moe, big, small}`` from an MoE training config.

    The MoE is ``training_module.model``; ``big`` and ``small`` are its high- and low-fidelity
    experts built alone on the element types, at the MoE ``r_max`` unless they set their own.
    Dataset statistics become ``UNTRAINED_STATS``.

    Args:
        path: training config (YAML) with an ``MoEModel`` of two experts at ``training_module.model``
        model_dtype: overrides the config's ``model_dtype``
        hf_expert: name of the high-fidelity expert (default: the first expert)
    """
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    moe = OmegaConf.to_container(
        OmegaConf.create(_replace_stats(raw)).training_module.model, resolve=True
    )
    if model_dtype is not None:
        moe["model_dtype"] = model_dtype
    hf, lf = expert_pair(list(moe["experts"]), hf_expert)
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
    return configs


def expert_pair(expert_names: Sequence[str], hf_expert: Optional[str]) -> Tuple[str, str]:
    """(high-fidelity, low-fidelity) expert names of a two-expert MoE."""
    if len(expert_names) != 2:
        raise ValueError(f"the benchmark needs an MoE of two experts, got {list(expert_names)}")
    hf = expert_names[0] if hf_expert is None else hf_expert
    if hf not in expert_names:
        raise ValueError(f"--hf-expert `{hf}` is not one of the experts {list(expert_names)}")
    return hf, [e for e in expert_names if e != hf][0]


def build_model(config: Dict) -> torch.nn.Module:
    """Call the model builder named by ``config["_target_"]`` (a nequip ``GraphModel``)."""
    from hydra.utils import get_method

    config = dict(config)
    return get_method(config.pop("_target_"))(**config)


def bench_model(
    name: str, source: Dict, device: torch.device, hf_expert: Optional[str] = None
) -> BenchModel:
    """Build (``{"config": ...}``) or load (``{"path": ...}``) one model of the benchmark."""
    if "config" in source:
        model = build_model(source["config"]).to(device).eval()
        metadata = dict(model.metadata)
    else:
        model, metadata = load_model(source["path"], device)
    experts = None
    if name == "moe":
        experts = expert_pair(
            CompositeTypeTable.from_metadata(metadata).expert_names, hf_expert
        )
    compiled = "path" in source and is_compiled(source["path"])
    return BenchModel(name, model, metadata, source, compiled, experts)


def compile_model(
    model: BenchModel, data: AtomicDataDict.Type, path, device: torch.device
) -> str:
    """AOTInductor-compile an eager model for the ``ase`` target, as ``nequip-compile`` does.

    The file is dynamic in atom and edge counts and carries the model metadata.

    Args:
        model: eager model
        data: example inputs
        path: output file, ending in ``.nequip.pt2``
        device: compile device
    """
    from nequip.scripts._compile_utils import COMPILE_TARGET_DICT, AOTI_ASE_TARGET
    from nequip.utils.aot import aot_export_model
    from nequip.utils.aoti_metadata import (
        NEQUIP_AOTI_INPUTS_KEY,
        NEQUIP_AOTI_OUTPUTS_KEY,
        serialize_aoti_keys,
    )
    from nequip.utils.global_state import get_latest_global_state

    target = COMPILE_TARGET_DICT[AOTI_ASE_TARGET]
    metadata = dict(model.metadata)
    metadata.update(get_latest_global_state(only_metadata_related=True))
    metadata[NEQUIP_AOTI_INPUTS_KEY] = serialize_aoti_keys(target["input"])
    metadata[NEQUIP_AOTI_OUTPUTS_KEY] = serialize_aoti_keys(target["output"])
    metadata = {
        k: str(int(v)) if isinstance(v, bool) else str(v) for k, v in metadata.items()
    }
    batch_map = target["batch_map_settings"](
        {
            "graph": torch.export.Dim.STATIC,
            "node": torch.export.Dim("num_nodes", min=2, max=torch.inf),
            "edge": torch.export.Dim("num_edges", min=2, max=torch.inf),
        }
    )
    return aot_export_model(
        model=model.model,
        device=device,
        input_fields=target["input"],
        output_fields=target["output"],
        data=target["data_settings"](dict(data)),
        batch_map=batch_map,
        output_path=str(path),
        inductor_configs={"aot_inductor.metadata": metadata},
        seed=1,
    )


# ---------------------------------------------------------------------------- timing


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(model: torch.nn.Module, data: AtomicDataDict.Type, device) -> float:
    """Wall time (s) of one model call, forces included."""
    synchronize(device)
    start = time.perf_counter()
    model(dict(data))[AtomicDataDict.FORCE_KEY]
    synchronize(device)
    return time.perf_counter() - start


def time_interleaved(
    calls: Dict[str, Callable[[], float]], repeats: int, warmup: int
) -> Dict[str, List[float]]:
    """Run every timed call ``warmup`` times, then ``repeats`` rounds of one call each.

    Interleaving spreads load fluctuations of a shared machine over all calls alike.
    """
    for _ in range(warmup):
        for call in calls.values():
            call()
    times = {key: [] for key in calls}
    for _ in range(repeats):
        for key, call in calls.items():
            times[key].append(call())
    return times


def speed_figures(t_moe: float, t_big: float, t_small: float, hf_fraction: float) -> Dict:
    """Speed-up of the MoE over the big expert, the ideal of the cost model, and their ratio."""
    cost_ratio = t_small / t_big
    ideal = 1.0 / (hf_fraction + (1.0 - hf_fraction) * cost_ratio)
    speedup = t_big / t_moe
    return {
        "cost_ratio": cost_ratio,
        "speedup": speedup,
        "ideal_speedup": ideal,
        "efficiency": speedup / ideal,
    }


def speed_rows(
    models: Dict[str, BenchModel],
    slab: SlabSpec,
    fractions: Sequence[float],
    repeats: int,
    warmup: int,
    device: torch.device,
) -> List[Dict]:
    """Time the MoE at every fraction and both experts alone on one slab; one row per fraction."""
    atoms = slab.build()
    moe = models["moe"]
    forced = moe.forced_high_fidelity(atoms)
    masks = [high_fidelity_mask(atoms, f, forced) for f in fractions]
    inputs = {
        "big": models["big"].inputs(atoms, forced, device),
        "small": models["small"].inputs(atoms, forced, device),
    }
    for f, mask in zip(fractions, masks):
        inputs[f"moe@{f}"] = moe.inputs(atoms, mask, device)
    calls = {
        key: (lambda m=models[key.split("@")[0]].model, d=data: time_call(m, d, device))
        for key, data in inputs.items()
    }
    times = time_interleaved(calls, repeats, warmup)
    median = {key: statistics.median(values) for key, values in times.items()}
    rows = []
    for f, mask in zip(fractions, masks):
        key = f"moe@{f}"
        hf_fraction = float(mask.mean())
        figures = speed_figures(median[key], median["big"], median["small"], hf_fraction)
        # the cost model per edge: each expert's share of the edges it evaluates alone
        hf_edges = _centre_fraction(inputs["big"], mask)
        lf_edges = _centre_fraction(inputs["small"], ~mask)
        ideal_edges = 1.0 / (hf_edges + lf_edges * figures["cost_ratio"])
        rows.append(
            {
                "n_atoms": len(atoms),
                "slab": dataclasses.asdict(slab),
                "target_fraction": f,
                "hf_fraction": hf_fraction,
                "n_hf_atoms": int(mask.sum()),
                "n_edges": {
                    name: int(inputs[k][AtomicDataDict.EDGE_INDEX_KEY].shape[1])
                    for name, k in (("moe", key), ("big", "big"), ("small", "small"))
                },
                "t_moe_s": median[key],
                "t_big_s": median["big"],
                "t_small_s": median["small"],
                **figures,
                "hf_edge_fraction": hf_edges,
                "lf_edge_fraction": lf_edges,
                "ideal_speedup_edges": ideal_edges,
                "efficiency_edges": figures["speedup"] / ideal_edges,
                "times_s": {"moe": times[key], "big": times["big"], "small": times["small"]},
            }
        )
    return rows


def _centre_fraction(data: AtomicDataDict.Type, atoms: np.ndarray) -> float:
    """Fraction of the edges of ``data`` centred on the masked ``atoms``."""
    centres = data[AtomicDataDict.EDGE_INDEX_KEY][0].cpu().numpy()
    return float(atoms[centres].mean())


def fit_exponent(n_atoms: Sequence[int], times: Sequence[float]) -> Optional[float]:
    """Exponent ``b`` of ``t ~ N^b`` by least squares in log-log (``None`` below two sizes)."""
    if len(set(n_atoms)) < 2:
        return None
    return float(np.polyfit(np.log(n_atoms), np.log(times), 1)[0])


def scaling_from_rows(rows: List[Dict]) -> Dict[str, Dict]:
    """Time per atom against N for the big and small experts and the MoE at each fraction."""
    series = {}
    for row in rows:
        for label, t in (
            ("big", row["t_big_s"]),
            ("small", row["t_small_s"]),
            (f"moe f={row['target_fraction']:g}", row["t_moe_s"]),
        ):
            entry = series.setdefault(label, {"n_atoms": [], "time_s": []})
            if row["n_atoms"] not in entry["n_atoms"]:
                entry["n_atoms"].append(row["n_atoms"])
                entry["time_s"].append(t)
    for entry in series.values():
        entry["time_per_atom_s"] = [t / n for t, n in zip(entry["time_s"], entry["n_atoms"])]
        entry["exponent"] = fit_exponent(entry["n_atoms"], entry["time_s"])
    return series


# ---------------------------------------------------------------------------- memory


def _proc_status_bytes(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def _peak_call_memory(call: Callable[[], None], device: torch.device) -> Dict[str, int]:
    """Memory before and at the peak of one ``call``, after one untimed warm-up call.

    CPU: resident set size, its peak (``VmHWM``) reset through ``/proc/self/clear_refs`` after
    the warm-up; run with a fixed ``MALLOC_MMAP_THRESHOLD_`` so that freed tensors leave the
    resident set. (``ru_maxrss`` would not do: a forked child keeps its parent's resident size
    at the fork as a floor.) CUDA: allocated device memory.
    """
    call()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = torch.cuda.memory_allocated(device)
        call()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak resident set size
        baseline = _proc_status_bytes("VmRSS")
        call()
        peak = _proc_status_bytes("VmHWM")
    return {"baseline_bytes": baseline, "peak_bytes": peak, "call_bytes": peak - baseline}


def memory_worker():
    """Entry point of a memory measurement subprocess: JSON spec on stdin, JSON result on stdout."""
    spec = json.load(sys.stdin)
    from nequip.utils.global_state import set_global_state

    set_global_state(allow_tf32=False)
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    model = bench_model(spec["name"], spec["source"], device, spec["hf_expert"])
    atoms = SlabSpec(**spec["slab"]).build()
    mask = high_fidelity_mask(atoms, spec["fraction"], model.forced_high_fidelity(atoms))
    data = model.inputs(atoms, mask, device)
    result = _peak_call_memory(lambda: time_call(model.model, data, device), device)
    print(json.dumps(result))


def measure_memory(
    model: BenchModel,
    slab: SlabSpec,
    fraction: float,
    device: torch.device,
    hf_expert: Optional[str],
) -> Dict[str, int]:
    """Peak memory of one call of ``model`` on ``slab``, measured in a fresh subprocess."""
    if device.type == "cpu" and not os.path.exists("/proc/self/clear_refs"):
        raise RuntimeError("CPU peak-memory measurement needs Linux /proc")
    spec = {
        "name": model.name,
        "source": model.source,
        "slab": dataclasses.asdict(slab),
        "fraction": fraction,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "hf_expert": hf_expert,
    }
    proc = subprocess.run(
        [sys.executable, "-c", "from nequip_moe.benchmark import memory_worker; memory_worker()"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(_MMAP_THRESHOLD)},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement of `{model.name}` failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def memory_section(
    models: Dict[str, BenchModel],
    slab: SlabSpec,
    fraction: float,
    device: torch.device,
    hf_expert: Optional[str],
) -> Dict:
    """Peak memory of the MoE (at ``fraction``) and of both experts alone on one slab."""
    result = {
        "n_atoms": len(slab.build()),
        "hf_fraction_target": fraction,
        "method": "CUDA max_memory_allocated of one call after a warm-up, fresh subprocess"
        if device.type == "cuda"
        else "peak RSS (VmHWM) of one call after a warm-up, reset via /proc/self/clear_refs, "
        f"minus the RSS before it; fresh subprocess, MALLOC_MMAP_THRESHOLD_={_MMAP_THRESHOLD}",
    }
    for name, model in models.items():
        result[name] = measure_memory(model, slab, fraction, device, hf_expert)
    result["moe_over_big"] = result["moe"]["call_bytes"] / result["big"]["call_bytes"]
    return result


# ---------------------------------------------------------------------------- training


def emt_labelled(atoms: ase.Atoms) -> ase.Atoms:
    """A copy of ``atoms`` carrying EMT energy, forces and stress as training labels."""
    atoms = atoms.copy()
    atoms.calc = EMT()
    results = {
        "energy": atoms.get_potential_energy(),
        "forces": atoms.get_forces(),
        "stress": atoms.get_stress(),
    }
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def training_batch(
    model: BenchModel,
    frames: List[ase.Atoms],
    fraction: float,
    device: torch.device,
    shared: Optional[torch.nn.Module] = None,
) -> AtomicDataDict.Type:
    """Labelled frames batched with ``model``'s atom types and neighbour list.

    Args:
        model: the model the batch is for
        frames: labelled structures
        fraction: target high-fidelity fraction of each frame (MoE only)
        device: device of the batch
        shared: transform adding the per-atom ``shared`` marks of co-training (default: none)
    """
    graphs = []
    for atoms in frames:
        mask = high_fidelity_mask(atoms, fraction, model.forced_high_fidelity(atoms))
        data = model.inputs(atoms, mask, torch.device("cpu"))
        if shared is not None:
            data = shared(data)
        graphs.append(AtomicDataDict.to_(data, device))
    return AtomicDataDict.batched_from_list(graphs)


def training_step(
    model: torch.nn.Module,
    loss_fn: torch.nn.Module,
    batch: AtomicDataDict.Type,
    device: torch.device,
) -> Callable[[], float]:
    """A timed training step: forward (forces with ``create_graph``), loss, backward and an
    Adam update."""
    model.train()
    loss_fn = loss_fn.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> float:
        synchronize(device)
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = loss_fn(model(dict(batch)), batch)["weighted_sum"]
        loss.backward()
        optimizer.step()
        synchronize(device)
        return time.perf_counter() - start

    return step


def training_section(
    eager_models: Dict[str, BenchModel],
    slab: SlabSpec,
    num_frames: int,
    fraction: float,
    repeats: int,
    warmup: int,
    device: torch.device,
) -> Dict:
    """Eager training-step times on one batch: the big expert alone, the MoE, and the MoE
    co-trained.

    ``big`` and ``moe`` use nequip's energy/force/stress loss. ``moe_cotrain`` adds the
    agreement terms of ``nequip_moe.train`` (per-atom energies and whole-frame forces of both
    experts on the shared bulk-like Pt atoms marked by ``nequip_moe.data.SharedEnvironments``),
    as in ``configs/tiny_cotrain.yaml``.

    Args:
        eager_models: ``{moe, big, small}`` eager models
        slab: the frames' slab (each frame rattled with its own seed)
        num_frames: frames in the batch
        fraction: target high-fidelity fraction of each frame
        repeats: timed steps per model (median reported)
        warmup: untimed steps first
        device: training device
    """
    from nequip.train import EnergyForceStressLoss
    from nequip_moe.data import SharedEnvironments
    from nequip_moe.train import AgreementMSE, ExpertAgreement

    frames = [
        emt_labelled(dataclasses.replace(slab, seed=slab.seed + i).build())
        for i in range(num_frames)
    ]
    moe = eager_models["moe"]
    agreement = [
        {
            "name": f"{field}_agreement",
            "field": ExpertAgreement(field, list(moe.experts)),
            "metric": AgreementMSE(),
            "coeff": 1.0,
        }
        for field in (AtomicDataDict.PER_ATOM_ENERGY_KEY, AtomicDataDict.FORCE_KEY)
    ]
    cotrain_batch = training_batch(
        moe, frames, fraction, device, shared=SharedEnvironments(host="Pt")
    )
    steps = {
        "big": training_step(
            eager_models["big"].model,
            EnergyForceStressLoss(),
            training_batch(eager_models["big"], frames, fraction, device),
            device,
        ),
        "moe": training_step(
            moe.model,
            EnergyForceStressLoss(),
            training_batch(moe, frames, fraction, device),
            device,
        ),
        "moe_cotrain": training_step(
            moe.model, EnergyForceStressLoss(extra_metrics=agreement), cotrain_batch, device
        ),
    }
    times = time_interleaved(steps, repeats, warmup)
    median = {name: statistics.median(t) for name, t in times.items()}
    return {
        "num_frames": num_frames,
        "n_atoms": sum(len(a) for a in frames),
        "n_shared_atoms": int(cotrain_batch[SHARED_KEY].sum()),
        "hf_fraction_target": fraction,
        **{f"{name}_step_s": t for name, t in median.items()},
        "moe_over_big": median["moe"] / median["big"],
        "moe_cotrain_over_big": median["moe_cotrain"] / median["big"],
        "times_s": times,
    }


# ---------------------------------------------------------------------------- report


def machine_info(device: torch.device) -> Dict:
    import nequip
    import allegro
    from nequip_moe import __version__

    cpu = platform.processor()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    info = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "nequip": nequip.__version__,
            "nequip-allegro": allegro.__version__,
            "nequip-moe": __version__,
            "ase": ase.__version__,
            "numpy": np.__version__,
        },
    }
    return info


def format_table(rows: List[Dict]) -> str:
    """Terminal table of the speed rows."""
    header = (
        f"{'N':>6} {'f':>6} {'t_big':>9} {'t_small':>9} {'t_moe':>9} {'speedup':>8} "
        f"{'ideal':>7} {'eff':>6} {'eff_edges':>9}"
    )
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['n_atoms']:>6} {r['hf_fraction']:>6.3f} {r['t_big_s']:>9.4f} "
            f"{r['t_small_s']:>9.4f} {r['t_moe_s']:>9.4f} {r['speedup']:>8.2f} "
            f"{r['ideal_speedup']:>7.2f} {r['efficiency']:>6.2f} {r['efficiency_edges']:>9.2f}"
        )
    return "\n".join(lines)


def plot_results(results: Dict, out_dir) -> List[str]:
    """Speed-up and ideal against fraction, time per atom against N (PNG files)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = pathlib.Path(out_dir)
    paths = []
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for n in sorted({r["n_atoms"] for r in results["rows"]}):
        rows = [r for r in results["rows"] if r["n_atoms"] == n]
        (line,) = ax.plot(
            [r["hf_fraction"] for r in rows], [r["speedup"] for r in rows], "o-", label=f"N={n}"
        )
        ax.plot(
            [r["hf_fraction"] for r in rows],
            [r["ideal_speedup"] for r in rows],
            "--",
            color=line.get_color(),
        )
    ax.set_xlabel("high-fidelity fraction f")
    ax.set_ylabel("speed-up over all-big (dashed: ideal)")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    paths.append(str(out_dir / "speedup.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for label, entry in results["scaling"].items():
        exponent = entry["exponent"]
        suffix = "" if exponent is None else f" (N^{exponent:.2f})"
        ax.plot(entry["n_atoms"], entry["time_per_atom_s"], "o-", label=label + suffix)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("atoms N")
    ax.set_ylabel("time per atom (s)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(str(out_dir / "scaling.png"))
    fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------- driver


@dataclasses.dataclass
class BenchOptions:
    """What to benchmark and how.

    Args:
        config: MoE training config whose untrained models are benchmarked (unless ``model_files``)
        model_files: ``{moe, big, small}`` -> compiled file, package or checkpoint
        hf_expert: the MoE's high-fidelity expert (default: its first expert)
        model_dtype: overrides the config's ``model_dtype``
        sizes: slab sizes (surface atoms along each direction)
        layers: Pt layers of the slabs
        fractions: target high-fidelity fractions
        repeats: timed calls per model and structure (median reported)
        warmup: untimed calls before timing
        device: ``cpu`` or ``cuda``
        eager: time eager models instead of AOTInductor-compiled ones
        memory: measure peak memory at the largest size
        memory_fraction: high-fidelity fraction of the memory measurement
        training: time training steps
        train_frames: frames in the training batch
        train_size: slab size of the training frames
        out_dir: where compiled models go
    """

    config: Optional[str] = None
    model_files: Optional[Dict[str, str]] = None
    hf_expert: Optional[str] = None
    model_dtype: Optional[str] = None
    sizes: Sequence[int] = (6, 8, 11, 16)
    layers: int = 8
    fractions: Sequence[float] = (0.0, 0.1, 0.25, 0.5, 1.0)
    repeats: int = 5
    warmup: int = 1
    device: str = "cpu"
    eager: bool = False
    memory: bool = True
    memory_fraction: float = 0.25
    training: bool = True
    train_frames: int = 4
    train_size: int = 4
    out_dir: str = "nequip_moe_bench"


def prepare_models(
    options: BenchOptions, device: torch.device, log: Callable[[str], None]
) -> Tuple[Dict[str, BenchModel], Optional[Dict[str, BenchModel]]]:
    """The timed models and, where there are any, their eager counterparts for training.

    Configs and checkpoints or packages give eager models, compiled once each into
    ``out_dir`` unless ``options.eager``; compiled files are used as they are.
    """
    if options.model_files is not None:
        sources = {name: {"path": str(options.model_files[name])} for name in MODEL_NAMES}
    else:
        configs = configs_from_training_config(
            options.config, options.model_dtype, options.hf_expert
        )
        sources = {name: {"config": configs[name]} for name in MODEL_NAMES}
    models = {}
    for name in MODEL_NAMES:
        log(f"loading {name}: {sources[name].get('path', 'untrained, from config')}")
        models[name] = bench_model(name, sources[name], device, options.hf_expert)
    eager = {name: m for name, m in models.items() if not m.compiled}
    if len(eager) < len(MODEL_NAMES):
        eager = None
    if options.eager:
        return models, eager

    out_dir = pathlib.Path(options.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    example = SlabSpec(size=3, layers=4, co_spacing=2)
    atoms = example.build()
    for name, model in models.items():
        if model.compiled:
            continue
        path = out_dir / f"{name}.nequip.pt2"
        log(f"compiling {name} (AOTInductor, {device}) -> {path}")
        start = time.perf_counter()
        mask = high_fidelity_mask(atoms, 0.5, model.forced_high_fidelity(atoms))
        compile_model(model, model.inputs(atoms, mask, device), path, device)
        models[name] = bench_model(name, {"path": str(path)}, device, options.hf_expert)
        log(f"  compiled {name} in {time.perf_counter() - start:.0f} s")
    return models, eager


def run_benchmark(options: BenchOptions, log: Callable[[str], None] = print) -> Dict:
    """Run the speed, scaling, memory and training benchmarks; returns the JSON-ready results.

    Args:
        options: what to run
        log: progress messages
    """
    from nequip.utils.global_state import set_global_state

    device = torch.device(options.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available")
    set_global_state(allow_tf32=False)
    results = {"machine": machine_info(device), "options": dataclasses.asdict(options)}
    models, eager_models = prepare_models(options, device, log)

    rows = []
    for size in options.sizes:
        slab = SlabSpec(size=size, layers=options.layers)
        start = time.perf_counter()
        new_rows = speed_rows(
            models, slab, options.fractions, options.repeats, options.warmup, device
        )
        rows.extend(new_rows)
        first = new_rows[0]
        moe_times = ", ".join(
            f"moe f={r['hf_fraction']:.2f} {r['t_moe_s']:.3g} s" for r in new_rows
        )
        log(
            f"N={first['n_atoms']}: big {first['t_big_s']:.3g} s, "
            f"small {first['t_small_s']:.3g} s, {moe_times} "
            f"({time.perf_counter() - start:.0f} s)"
        )
    results["rows"] = rows
    results["scaling"] = scaling_from_rows(rows)

    results["memory"] = None
    if options.memory:
        slab = SlabSpec(size=max(options.sizes), layers=options.layers)
        log(f"peak memory at {len(slab.build())} atoms (one subprocess per model)")
        results["memory"] = memory_section(
            models, slab, options.memory_fraction, device, options.hf_expert
        )

    results["training"] = None
    if options.training:
        if eager_models is None:
            results["training"] = {
                "skipped": "training needs eager models (config, checkpoint or package), "
                "not compiled files"
            }
        else:
            log("training steps (eager)")
            results["training"] = training_section(
                eager_models,
                SlabSpec(size=options.train_size, layers=6, co_spacing=2, rattle=0.1),
                options.train_frames,
                options.memory_fraction,
                options.repeats,
                options.warmup,
                device,
            )
    results["machine"]["load_average_end"] = (
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    )
    return results
