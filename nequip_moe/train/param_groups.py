"""Optimizer parameter groups for MoE models: a learning rate of its own for an expert."""

from typing import Dict, List, Optional

import torch

from nequip_moe.nn import MixtureOfExpertsEnergy


def expert_param_groups(
    model: torch.nn.Module, expert_lr: Optional[Dict[str, float]] = None
) -> List[Dict]:
    """Parameter groups giving experts their own learning rates (others use the optimizer's).

    Frozen parameters (``frozen_experts`` of :func:`~nequip_moe.model.MoEModel`) are left out.
    Use as the optimizer's ``param_groups``::

        optimizer:
          _target_: torch.optim.Adam
          lr: 0.005
          param_groups:
            _target_: nequip_moe.train.expert_param_groups
            expert_lr: {small: 0.01}

    Args:
        model: the training module's model (a ``ModuleDict`` of MoE ``GraphModel`` s)
        expert_lr (Dict[str, float]): expert name -> learning rate (default none: one group)
    """
    expert_lr = dict(expert_lr or {})
    moe_modules = [m for m in model.modules() if isinstance(m, MixtureOfExpertsEnergy)]
    if expert_lr and not moe_modules:
        raise ValueError("expert_lr given, but the model has no MoE experts")
    groups, grouped = [], set()
    for moe in moe_modules:
        unknown = [name for name in expert_lr if name not in moe.experts]
        if unknown:
            raise ValueError(f"expert_lr names {unknown}, which are not experts {list(moe.experts)}")
        for name, lr in expert_lr.items():
            params = [p for p in moe.experts[name].parameters() if p.requires_grad]
            grouped.update(id(p) for p in params)
            if params:
                groups.append({"params": params, "lr": float(lr)})
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in grouped]
    if rest:
        groups.insert(0, {"params": rest})
    return groups
