"""Occlusion maps: zflight (incremental and full re-run) against ``captum.attr.Occlusion``.

Same model, images, window, stride and fill (0 after normalisation, Captum's ``baselines=0``).
Captum reports, per pixel, the drop in the score averaged over the windows that cover it; zflight
reports the true-class probability per window, so the comparison is
``captum == base_prob - maps.upsample(maps.prob)`` with the score = softmax probability of the
true class. Both grids place windows at 0, s, 2s, ... and these cases end flush with the border,
so the windows are the same. Captum runs at its fastest ``perturbations_per_eval`` among
1, 16, 64 and 256, chosen on a pilot run over the first image. The networks are random, with fc8
scaled so that their predictions are confident (p 0.3-0.9) and occluding moves them visibly.
Timings are one run each, side by side in one process; the machine may be shared, so run it more
than once.

    python benchmarks/occlusion.py [--case zfnet224|shapes64|all]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from dataclasses import dataclass

import torch

from zflight.analysis.occlusion import occlusion_maps, window_starts
from zflight.models import zfnet

PERTURBATIONS = (1, 16, 64, 256)


@dataclass(frozen=True)
class Case:
    name: str
    image: int
    num_images: int
    size: int
    stride: int
    num_classes: int
    head_pool: int
    logit_scale: float


CASES = {
    "zfnet224": Case("ZFNet w0.25, 224 px", 224, 4, 32, 8, 1000, 6, 4.0),
    "shapes64": Case("ZFNet w0.25, 64 px (shapes)", 64, 8, 16, 4, 8, 2, 1.0),
}


def environment() -> str:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import captum

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"torch {torch.__version__}, captum {captum.__version__}, python {platform.python_version()}\n"
        f"device cpu ({cpu}), {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"load average {load}"
    )


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def zflight_drop(model, images, labels, case: Case, method: str) -> torch.Tensor:
    maps = occlusion_maps(
        model,
        images,
        labels,
        size=case.size,
        stride=case.stride,
        method=method,
        max_batch_bytes=256 << 20,
    )
    return maps.base_prob[:, None, None] - maps.upsample(maps.prob)


def captum_drop(model, images, labels, case: Case, per_eval: int) -> torch.Tensor:
    from captum.attr import Occlusion

    occlusion = Occlusion(lambda x: model(x).softmax(1))
    with torch.no_grad():
        attr = occlusion.attribute(
            images,
            sliding_window_shapes=(3, case.size, case.size),
            strides=(3, case.stride, case.stride),
            baselines=0,
            target=labels,
            perturbations_per_eval=per_eval,
        )
    return attr


def run_case(case: Case) -> None:
    torch.manual_seed(0)
    model = zfnet(num_classes=case.num_classes, width=0.25, head_pool=case.head_pool).eval()
    model.classifier.fc8.weight.data *= case.logit_scale
    images = torch.randn(case.num_images, 3, case.image, case.image)
    with torch.no_grad():
        labels = model(images).argmax(1)
        confidence = model(images).softmax(1).max(1).values
    # Captum clips a last window that overhangs; zflight shifts it flush. Same grid only if exact.
    assert (case.image - case.size) % case.stride == 0, "windows would differ at the border"
    positions = len(window_starts(case.image, case.size, case.stride)) ** 2
    print(
        f"\n== {case.name}: {case.num_images} images, {case.size} px square, stride {case.stride}, "
        f"{positions} positions per image, fill 0 (data set mean); true class = predicted, "
        f"p = {', '.join(f'{p:.2f}' for p in confidence.tolist())}"
    )
    zflight_drop(model, images[:1], labels[:1], case, "incremental")  # warm-up
    pilot = {}
    for per_eval in PERTURBATIONS:
        _, pilot[per_eval] = timed(
            lambda p=per_eval: captum_drop(model, images[:1], labels[:1], case, p)
        )
    best = min(pilot, key=pilot.get)
    print(
        "captum pilot (first image): "
        + ", ".join(f"ppe={p}: {t:.2f} s" for p, t in pilot.items())
        + f" -> ppe={best}"
    )
    inc, t_inc = timed(lambda: zflight_drop(model, images, labels, case, "incremental"))
    ref, t_cap = timed(lambda: captum_drop(model, images, labels, case, best))
    full, t_full = timed(lambda: zflight_drop(model, images, labels, case, "full"))
    same_channels = (ref - ref[:, :1]).abs().max().item()
    err_inc = (inc - ref[:, 0]).abs().max().item()
    err_full = (full - ref[:, 0]).abs().max().item()
    print(f"captum maps equal across channels: max |diff| {same_channels:.1e}")
    largest = ref.abs().max().item()
    print(
        f"max |zflight - captum|: incremental {err_inc:.2e}, full re-run {err_full:.2e}; "
        f"largest drop {largest:.3f}, so relative {err_inc / largest:.1e} and {err_full / largest:.1e}"
    )
    assert err_inc < 1e-4 and err_full < 1e-4, "zflight and captum disagree"
    print(f"{'method':<32}{'seconds':>10}{'vs captum':>12}")
    for name, t in (
        (f"captum Occlusion (ppe={best})", t_cap),
        ("zflight full re-run", t_full),
        ("zflight incremental", t_inc),
    ):
        print(f"{name:<32}{t:>10.2f}{t_cap / t:>11.2f}x")
    print(f"incremental vs full re-run: {t_full / t_inc:.2f}x faster")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=[*CASES, "all"], default="all")
    args = parser.parse_args()
    print(environment())
    for key in CASES if args.case == "all" else [args.case]:
        run_case(CASES[key])
    print(f"\nload average at the end: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
