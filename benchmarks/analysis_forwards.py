"""What the default analyses cost one rank, in forward passes of the model, against an ImageNet epoch.

Runs each default visual callback's analysis once on ZFNet (random weights: the work does not
depend on them) at ``--size`` px and ``--width``, as rank 0 of ``--world`` ranks (the other ranks'
shares are stood in for by copies of rank 0's in every gather), under the cost ledger's FLOP count
(``zflight.analysis.cost``), without object masks (no score sets), as on ImageNet. Prints each
callback's forward passes on that rank and their share of one ImageNet epoch's work on one rank:
training 1,281,167 images x 3 (forward + backward = 2 forwards) plus validation 50,000 x 1, split
over ``--world`` ranks. Mining's hooks during validation are top-k bookkeeping (no FLOPs) and are
not included; seconds are not measured here (the ledger of a real run has them).

    python benchmarks/analysis_forwards.py --size 224 --width 0.5 --world 4
    python benchmarks/analysis_forwards.py --size 64 --width 0.25 --world 1 --classes 8
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time
from types import SimpleNamespace

import torch

from zflight.analysis.cost import CountFlops, forward_flops
from zflight.callbacks.isolation import isolated
from zflight.callbacks.results import Probe
from zflight.config import load_config
from zflight.models import zfnet
from zflight.run.build import build_callbacks

IMAGENET_TRAIN, IMAGENET_VAL = 1_281_167, 50_000
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--world", type=int, default=4)
    parser.add_argument("--classes", type=int, default=1000)
    args = parser.parse_args()
    print(
        f"torch {torch.__version__}, python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{torch.get_num_threads()} threads; ZFNet width {args.width}, {args.size} px, "
        f"{args.classes} classes, rank 0 of {args.world}"
    )
    torch.manual_seed(0)
    model = zfnet(
        num_classes=args.classes, width=args.width, head_pool=6 if args.size >= 160 else 2
    ).eval()
    g = torch.Generator().manual_seed(0)
    probe = Probe(
        torch.randn(8, 3, args.size, args.size, generator=g),
        torch.arange(8) % args.classes,
        None,
        MEAN,
        STD,
        [f"class {i}" for i in range(args.classes)],
    )
    world = args.world
    ctx = SimpleNamespace(
        rank=0,
        world_size=world,
        all_gather=lambda t: torch.cat([t] * world),
        autocast=contextlib.nullcontext,
        epoch=0,
        device=torch.device("cpu"),
        trainer=None,
    )
    unit = forward_flops(model, (3, args.size, args.size))
    epoch = (3 * IMAGENET_TRAIN + IMAGENET_VAL) / world
    print(f"one forward: {unit / 1e9:.3f} GFLOP; ImageNet epoch on one rank: {epoch:,.0f} forwards")
    print(f"{'analysis':<12}{'forwards':>10}{'share':>9}{'seconds':>9}")
    total = 0.0
    for cb in build_callbacks(load_config([])):
        if not hasattr(cb, "analyze"):
            continue
        start = time.perf_counter()
        with isolated(model), torch.enable_grad() if cb.grad else torch.no_grad():
            with CountFlops() as counted:
                cb.analyze(model, probe, ctx)
        forwards = counted.flops / unit
        total += forwards
        seconds = time.perf_counter() - start
        print(f"{cb.name:<12}{forwards:>10,.0f}{forwards / epoch:>9.3%}{seconds:>9.1f}")
    print(f"{'total':<12}{total:>10,.0f}{total / epoch:>9.3%}   (goal: at most 2%)")


if __name__ == "__main__":
    main()
