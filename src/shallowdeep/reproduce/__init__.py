"""``shallowdeep reproduce``: the paper's experiment on one backbone and data set, step by step, with its tables.

The names below are plain constants (no torch), for the command's parser; :mod:`.steps` plans, runs and resumes the
steps, :mod:`.tables` writes ``tables.md`` and ``tables.json``, :mod:`.paper` reads the paper's figures.
"""

TRAININGS = ("cnn", "ic-only", "sdn", "mixed")  # the networks trained, in order
STEPS = (*TRAININGS, "backdoor")
DEFAULT_STEPS = TRAININGS
SCALES = ("quick", "paper")
