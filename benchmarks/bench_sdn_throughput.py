"""Training throughput of SDN training against plain CNN training of the same backbone, in one run.

One training step (forward, weighted loss over every exit, backward, SGD step) of ResNet-56 as an SDN
with six ICs against the same step of the plain CNN, batch 128 of 32x32 images, alternating the two
several times and keeping each one's best. Target: SDN training at most 15 % slower.

    python benchmarks/bench_sdn_throughput.py [--device cuda] [--steps 5] [--rounds 3]

Writes benchmarks/results/sdn_throughput.json.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import torch

from shallowdeep.build import build_sdn
from shallowdeep.io import atomic_write_json
from shallowdeep.model_spec import ModelSpec
from shallowdeep.train.recipe import sdn_ic_weights
from shallowdeep.train.trainer import weighted_loss

RESULT = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "sdn_throughput.json"


def images_per_second(net, weights, x, y, steps: int, device: torch.device) -> float:
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    net.train()
    for step in range(steps + 1):
        if step == 1:  # the first step warms up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        loss = weighted_loss(net(x), y, weights)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * len(y) / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet56")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    x = torch.randn(args.batch_size, 3, 32, 32, device=device)
    y = torch.randint(0, 10, (args.batch_size,), device=device)
    spec = ModelSpec(arch=args.arch, num_classes=10, input_shape=(3, 32, 32))
    cnn = build_sdn(replace(spec, exits=())).to(device)
    sdn = build_sdn(spec).to(device)
    sdn_weights = sdn_ic_weights(50, 100, [f / sdn.backbone_flops for f in sdn.exit_flops[:-1]]) + [1.0]
    best = {"cnn": 0.0, "sdn": 0.0}
    for _ in range(args.rounds):
        best["cnn"] = max(best["cnn"], images_per_second(cnn, [1.0], x, y, args.steps, device))
        best["sdn"] = max(best["sdn"], images_per_second(sdn, sdn_weights, x, y, args.steps, device))
    slowdown = 1 - best["sdn"] / best["cnn"]
    print(f"{args.arch} training, batch {args.batch_size} on {device}: CNN {best['cnn']:.1f} img/s, "
          f"SDN {best['sdn']:.1f} img/s, SDN slower by {100 * slowdown:.1f} % (target <= 15 %)")
    atomic_write_json(RESULT, {"settings": {**vars(args), "threads": torch.get_num_threads()},
                               "cnn_images_per_s": round(best["cnn"], 2), "sdn_images_per_s": round(best["sdn"], 2),
                               "sdn_slowdown": round(slowdown, 4)})


if __name__ == "__main__":
    main()
