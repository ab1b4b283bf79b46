"""The models of a benchmark: an MoE and each of its two experts alone, loaded from any nequip
model file or compiled with ``nequip-compile``, and how their inputs are built."""

import dataclasses
import pathlib
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import ase
from nequip.data import AtomicDataDict, from_ase
from nequip.data.transforms import NeighborListTransform
from nequip.nn.embedding.utils import cutoff_str_to_fulldict
from nequip.nn.graph_model import PER_EDGE_TYPE_CUTOFF_KEY

from nequip_moe.composite import CompositeTypeTable
from nequip_moe.benchmarking.options import MODEL_NAMES
from nequip_moe.integrations.compile import compile_model
from nequip_moe.integrations.model_files import is_compiled, load_model

@dataclasses.dataclass
class BenchModel:
    """A model under benchmark and what it needs to build its inputs.

    Args:
        name: one of ``MODEL_NAMES``
        model: maps an ``AtomicDataDict`` to outputs including forces
        metadata: model metadata (string values)
        path: the model file (checkpoint, package or compiled file)
        experts: for the MoE, the (high-fidelity, low-fidelity) expert names
    """

    name: str
    model: torch.nn.Module
    metadata: Dict[str, str]
    path: str
    experts: Optional[Tuple[str, str]] = None

    @property
    def compiled(self) -> bool:
        return is_compiled(self.path)

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

    @property
    def table(self) -> CompositeTypeTable:
        return CompositeTypeTable.from_metadata(self.metadata)

    def forced_high_fidelity(self, atoms: ase.Atoms) -> np.ndarray:
        """Atoms whose element has no low-fidelity composite type (none for single experts)."""
        if self.experts is None:
            return np.zeros(len(atoms), dtype=bool)
        return forced_high_fidelity(self.table, self.experts[1], atoms)

    def atom_types(self, atoms: ase.Atoms, high_fidelity: np.ndarray) -> np.ndarray:
        """Type index of every atom: its element (single experts) or composite type (MoE)."""
        if self.experts is not None:
            labels = expert_labels(self.table, self.experts, high_fidelity)
            return self.table.type_index(atoms.numbers, labels)
        missing = sorted(set(atoms.get_chemical_symbols()) - set(self.type_names))
        if missing:
            raise ValueError(f"model `{self.name}` has no type for {missing}")
        return np.array([self.type_names.index(s) for s in atoms.get_chemical_symbols()])

    def inputs(
        self,
        atoms: ase.Atoms,
        high_fidelity: np.ndarray,
        device: torch.device,
        uniform_cutoff: bool = False,
    ) -> AtomicDataDict.Type:
        """Graph of ``atoms`` with this model's atom types and neighbour list (its cutoffs).

        Args:
            uniform_cutoff: every pair within ``r_max`` (a superset of what any expert reads:
                the neighbour list co-training needs), instead of the per-edge-type cutoffs
        """
        data = from_ase(atoms)
        data[AtomicDataDict.ATOM_TYPE_KEY] = torch.as_tensor(
            self.atom_types(atoms, high_fidelity), dtype=torch.long
        )
        data = NeighborListTransform(
            r_max=self.r_max,
            per_edge_type_cutoff=None if uniform_cutoff else self.per_edge_type_cutoff,
            type_names=self.type_names,
        )(data)
        return AtomicDataDict.to_(data, device)


def forced_high_fidelity(
    table: CompositeTypeTable, lf_expert: str, atoms: ase.Atoms
) -> np.ndarray:
    """Atoms whose element has no composite type of the low-fidelity expert ``lf_expert``."""
    lf = {el for el, ex in zip(table.elements, table.experts) if ex == lf_expert}
    return np.array([s not in lf for s in atoms.get_chemical_symbols()], dtype=bool)


def expert_labels(
    table: CompositeTypeTable, experts: Tuple[str, str], high_fidelity: np.ndarray
) -> np.ndarray:
    """Integer expert label of every atom: ``experts[0]`` where ``high_fidelity``, else ``experts[1]``."""
    hf, lf = (table.expert_names.index(e) for e in experts)
    return np.where(high_fidelity, hf, lf).astype(np.int64)


def expert_pair(expert_names: Sequence[str], hf_expert: Optional[str]) -> Tuple[str, str]:
    """(high-fidelity, low-fidelity) expert names of a two-expert MoE."""
    if len(expert_names) != 2:
        raise ValueError(f"the benchmark needs an MoE of two experts, got {list(expert_names)}")
    hf = expert_names[0] if hf_expert is None else hf_expert
    if hf not in expert_names:
        raise ValueError(f"--hf-expert `{hf}` is not one of the experts {list(expert_names)}")
    return hf, [e for e in expert_names if e != hf][0]


def load_bench_model(
    name: str, path, device: torch.device, hf_expert: Optional[str] = None
) -> BenchModel:
    """Load one model of the benchmark (compiled file, package or checkpoint)."""
    model, metadata = load_model(path, device)
    experts = None
    if name == "moe":
        experts = expert_pair(CompositeTypeTable.from_metadata(metadata).expert_names, hf_expert)
    return BenchModel(name, model, metadata, str(path), experts)


def prepare_models(
    files: Dict[str, str],
    eager: bool,
    out_dir,
    device: torch.device,
    hf_expert: Optional[str],
    log: Callable[[str], None],
) -> Dict[str, BenchModel]:
    """The timed models: compiled files as they are; checkpoints and packages compiled once
    each with ``nequip-compile`` into ``out_dir``, unless ``eager``, with the torch threads the
    bench runs with (``integrations.compile``: Inductor writes them into its kernels)."""
    models = {}
    for name in MODEL_NAMES:
        path = files[name]
        if not eager and not str(path).endswith(".nequip.pt2"):
            out = pathlib.Path(out_dir) / f"{name}.nequip.pt2"
            log(f"nequip-compile {name} (AOTInductor, {device}) -> {out}")
            start = time.perf_counter()
            source = pathlib.Path(path).resolve()
            path = str(compile_model(source, out.resolve(), "ase", device.type,
                                     torch.get_num_threads(), cwd=source.parent))
            log(f"  compiled {name} in {time.perf_counter() - start:.0f} s")
        models[name] = load_bench_model(name, path, device, hf_expert)
    return models
