"""Early exit: stopping policies, the batched engine, simulation on stored outputs, calibration.

``early_exit(net, x, threshold=q)`` classifies a batch, dropping each sample from the computation at
the first internal classifier that is confident enough. :func:`simulate` and :func:`sweep` apply the
same rule to stored per-exit logits; :func:`calibrate` chooses a threshold on held-out outputs and
:func:`early_exit_result` gathers everything the ``early-exit`` command records.
"""

from ..exit_outputs import ExitOutputs
from .calibrate import DEFAULT_MAX_DROP, calibrate
from .engine import early_exit, run_backbone
from .policies import POLICIES, Entropy, ExitPolicy, MaxProb, Patience, make_policy, resolve_policy
from .result import early_exit_result, split_result
from .simulate import (Curve, Outcome, Summary, candidate_keys, curve, exit_scores, final_head, grid_keys, oracle,
                       simulate, summarise, sweep)

__all__ = [
    "DEFAULT_MAX_DROP", "POLICIES", "Curve", "Entropy", "ExitOutputs", "ExitPolicy", "MaxProb", "Outcome", "Patience", "Summary",
    "calibrate", "candidate_keys", "curve", "early_exit", "early_exit_result", "exit_scores", "final_head",
    "grid_keys", "make_policy", "oracle", "resolve_policy", "run_backbone", "simulate", "split_result", "summarise",
    "sweep",
]
