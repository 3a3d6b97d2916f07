"""The backdoor study (SDN paper, section 6): a BadNets trigger makes the network overthink destructively.

Poison a data set's training split with a trigger (:mod:`shallowdeep.data.poison`, :mod:`shallowdeep.data.trigger`:
data transforms, below the training loop, so that a poisoned run's data can be rebuilt), train or
fine-tune a CNN on it, turn it into an SDN by IC-only training on clean data, and measure the
attack, how much early exit recovers on triggered inputs, and how well the confusion score detects
them (:mod:`.metrics`, :mod:`.study`).
"""

from ..data.poison import DEFAULT_RATE, PoisonConfig, choose_poisoned, poison_data, poison_splits, triggered_inputs
from ..data.trigger import PATTERNS, PLACES, Trigger, TriggerSpec, build_trigger, default_side, place, stamp
from ..outputs import poisoned_run_data
from .metrics import accuracy, attack_success_rate, backdoor_figures, detection, per_exit
from .study import BASELINES, StudySettings, class_index, random_subset, run_study

__all__ = [
    "BASELINES", "DEFAULT_RATE", "PATTERNS", "PLACES", "PoisonConfig", "StudySettings", "Trigger", "TriggerSpec",
    "accuracy", "attack_success_rate", "backdoor_figures", "build_trigger", "choose_poisoned", "class_index",
    "default_side", "detection", "per_exit", "place", "poison_data", "poison_splits", "poisoned_run_data",
    "random_subset", "run_study", "stamp", "triggered_inputs",
]
