"""Early exit: stopping policies, the batched engine, simulation on stored outputs, calibration.

``early_exit(net, x, threshold=q)`` classifies a batch, dropping each sample from the computation at
the first internal classifier that is confident enough; :func:`early_exit_stream` does the same over many
batches with every stage run on full batches (faster over a data set). :func:`simulate` and :func:`sweep` apply the
same rule to stored per-exit logits, and :func:`oracle` lets each sample leave at its earliest correct
exit; :func:`calibrate` chooses a threshold on held-out outputs (with a Learn-then-Test guarantee when
given a confidence, or one threshold per IC), :func:`split_halves` splits one data set into a
calibration and an evaluation half, and :func:`early_exit_result` gathers everything the
``early-exit`` command records.
"""

from ..exit_outputs import ExitOutputs
from .calibrate import DEFAULT_MAX_DROP, calibrate
from .engine import early_exit, run_backbone
from .halves import HALVES_NOTE, index_hash, split_halves
from .ltt import Certificate, certify, drop_p_value
from .policies import POLICIES, Entropy, ExitPolicy, MaxProb, Patience, PerExitMaxProb, make_policy, resolve_policy
from .stream import early_exit_stream
from .result import best_at_budgets, early_exit_result, split_result
from .simulate import (Curve, Outcome, Summary, candidate_keys, curve, earliest_correct_exit, exit_scores, final_head,
                       grid_keys, oracle, simulate, summarise, sweep)

__all__ = [
    "DEFAULT_MAX_DROP", "HALVES_NOTE", "POLICIES", "Certificate", "Curve", "Entropy", "ExitOutputs", "ExitPolicy",
    "MaxProb", "Outcome", "Patience", "PerExitMaxProb", "Summary", "best_at_budgets", "calibrate", "candidate_keys",
    "certify", "curve", "drop_p_value", "earliest_correct_exit", "early_exit", "early_exit_result", "exit_scores",
    "early_exit_stream", "final_head", "grid_keys", "index_hash", "make_policy", "oracle", "resolve_policy", "run_backbone", "simulate",
    "split_halves", "split_result", "summarise", "sweep",
]
