"""Extra cost per training step of the edge-gradient agreement term (staged co-training).

Takes the training module of a co-training run that uses the term (e.g. ``nequip-train`` of
configs/tiny_staged.yaml: its ``last.ckpt``) and builds it twice, with the term (the loss entry
whose field is ``ExpertAgreement(field: edge_energy_gradient)`` and MoEModel
``cotraining_edge_gradients: true``) and without it (both removed), then times interleaved
training steps (nequip's ``training_step``, backward, the module's optimizer step) on the same
batch of the run's training frames (its data transforms: composite types, shared atoms,
neighbour list) and prints the median step times, their ratio and the median of each round's
ratio. Frozen experts are computed once per frame in both (``frozen_expert_cache``): the
warm-up steps fill the cache.

    OMP_NUM_THREADS=1 python benchmarks/edge_gradient_cost.py run/last.ckpt frames.xyz
"""

import argparse
import copy
import statistics

import torch
from ase.io import read
from hydra.utils import instantiate

from nequip.data import AtomicDataDict, from_ase
from nequip.utils.global_state import set_global_state

from nequip_moe.benchmarking.speed import time_interleaved
from nequip_moe.benchmarking.training import timed_step
from nequip_moe.benchmarking.untrained import training_module


def is_edge_gradient_term(entry) -> bool:
    field = entry.get("field", {})
    return isinstance(field, dict) and field.get("field") == "edge_energy_gradient"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="nequip checkpoint of a run with the edge term")
    parser.add_argument("data", help="extxyz of training frames (with the run's labels)")
    parser.add_argument("--frames", type=int, default=2, help="frames per batch (default 2)")
    parser.add_argument("--first", type=int, default=0, help="first frame of the batch")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    set_global_state(allow_tf32=False)

    checkpoint = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    info = checkpoint["hyper_parameters"]["info_dict"]
    module_config = copy.deepcopy(info["training_module"])
    if not any(is_edge_gradient_term(m) for m in module_config["loss"].get("extra_metrics", [])):
        raise SystemExit(f"{args.checkpoint}: its loss has no edge_energy_gradient term")
    without = copy.deepcopy(module_config)
    without["loss"]["extra_metrics"] = [
        m for m in without["loss"]["extra_metrics"] if not is_edge_gradient_term(m)
    ]
    without["model"]["cotraining_edge_gradients"] = False
    with_term = copy.deepcopy(module_config)
    with_term["model"]["cotraining_edge_gradients"] = True

    transforms = [instantiate(t) for t in info["data"]["transforms"]]
    frames = read(args.data, index=f"{args.first}:{args.first + args.frames}")
    graphs = []
    for atoms in frames:
        data = from_ase(atoms, include_keys=list(info["data"].get("include_keys", [])))
        for transform in transforms:
            data = transform(data)
        graphs.append(data)
    batch = AtomicDataDict.batched_from_list(graphs)
    device = torch.device("cpu")
    steps = {
        "without": timed_step(training_module(without, without["model"]), batch, device),
        "with_edge_term": timed_step(training_module(with_term, with_term["model"]), batch, device),
    }
    times = time_interleaved(steps, args.repeats, args.warmup)
    median = {name: statistics.median(t) for name, t in times.items()}
    num_edges = batch[AtomicDataDict.EDGE_INDEX_KEY].size(1)
    print(
        f"{len(frames)} frames, {batch[AtomicDataDict.POSITIONS_KEY].size(0)} atoms, "
        f"{num_edges} edges, {int(batch['shared'].sum())} shared atoms; "
        f"{args.repeats} steps each after {args.warmup} warm-up, {args.threads} thread(s)"
    )
    for name, value in median.items():
        print(f"  {name:16s} median step {1000 * value:8.1f} ms")
    # each round times both back to back: the median of the rounds' ratios is robust to load
    ratios = sorted(w / wo for w, wo in zip(times["with_edge_term"], times["without"]))
    quartiles = ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]
    print(
        f"  ratio with / without: {median['with_edge_term'] / median['without']:.3f} (medians); "
        f"per round {statistics.median(ratios):.3f} (quartiles {quartiles[0]:.3f}-{quartiles[1]:.3f})"
    )


if __name__ == "__main__":
    main()
