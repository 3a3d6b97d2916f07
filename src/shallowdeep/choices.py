"""The names and defaults the command line offers, as plain constants.

This module imports nothing, so the ``shallowdeep`` parser and every ``--help`` build without
torch; the library modules take these values from here. ``ARCHS`` and ``POLICY_NAMES`` name what
``shallowdeep.models`` and ``shallowdeep.exits`` register (the tests check that they agree).
"""

DATASETS = ("cifar10", "cifar100", "tinyimagenet", "imagefolder", "digits")
NORMALIZATIONS = ("paper", "imagenet", "dataset")
# the defaults of shallowdeep.train.DataSettings and TrainConfig, and of the options that give them
DATASET, NORMALIZATION, HOLDOUT_FRACTION = "cifar10", "paper", 0.1
SEED = 0
IC_LOSS = "growing"
CACHE_VIEWS = 2  # ic-only: augmented views of the training set cached (the README's, bench_ic_cache's)
CACHE_BUDGET_GB = 4.0  # ic-only: memory for the cached ICs' inputs
SPLITS = ("train", "holdout", "test")
ARCHS = ("mobilenet", "resnet56", "vgg16_bn", "wrn32_4")
LIBRARIES = ("torchvision", "timm")  # --backbone LIBRARY:NAME builds that library's model
MODES = ("cnn", "ic-only", "sdn")
# the paper's recipe per mode (weight decay: the backbone's, see shallowdeep.models)
PAPER_RECIPES = {
    "cnn": {"optimizer": "sgd", "lr": 0.1, "epochs": 100, "milestones": [35, 60, 85]},
    "sdn": {"optimizer": "sgd", "lr": 0.1, "epochs": 100, "milestones": [35, 60, 85]},
    "ic-only": {"optimizer": "adam", "lr": 1e-3, "epochs": 25, "milestones": [15]},
}
SCHEDULES = ("paper", "short")  # the paper's steps at milestones, or the short recipe below
SHORT_BELOW = 0.25  # without a schedule named, runs of fewer epochs than this share of the paper's take the short one
# the short recipe per mode, for runs of a few epochs (after airbench): the learning rate rises linearly over the
# first ``warmup`` of the batches, then falls linearly to zero, set every batch; label smoothing; Nesterov SGD with
# weight decay 5e-4 whatever the backbone, on a batch chosen from the run's length (SHORT_BATCH_SIZES)
# (benchmarks/bench_short_schedule.py)
SHORT_RECIPES = {
    "cnn": {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "nesterov": True, "label_smoothing": 0.2,
            "warmup": 0.2},
    "sdn": {"optimizer": "sgd", "lr": 0.1, "weight_decay": 5e-4, "nesterov": True, "label_smoothing": 0.2,
            "warmup": 0.2},
    "ic-only": {"optimizer": "adam", "lr": 3e-3, "warmup": 0.1},
}
# the short SGD recipe's batch: the largest of these that still gives the run SHORT_MIN_STEPS optimiser steps (the
# smallest when none does): a small data set gains from many small steps, a large one loses to their noise
SHORT_BATCH_SIZES, SHORT_MIN_STEPS = (16, 32, 64, 128), 4000
IC_LOSSES = ("growing", "uniform")  # SDN training: the paper's growing IC weights, or every exit weighted 1
IC_DESIGNS = ("paper", "conv", "ztw")
IC_WIDTH = 64  # channels of the conv and ztw heads' convolutions
POLICY_NAMES = ("maxprob", "entropy", "patience")
PRECISIONS = ("int8",)  # what export --quantize makes of the fp32 stages
CONFUSION_TRAIN_SAMPLES, CONFUSION_BINS = 5000, 30  # training images normalising the confusion score; histogram bins
DEFAULT_MAX_DROP = 0.01
PLACES = ("bottom-right", "bottom-left", "top-right", "top-left", "center")
BASELINES = ("train", "source", "none")
DEFAULT_RATE = 0.1
TRUST_CODE = "SHALLOWDEEP_TRUST_CODE"  # environment variable: "1" imports a run's backbone.py even if it changed
