"""What does training through zflight cost over a plain PyTorch loop on the same model, data and
precision? Both use the same ops (the fast exact LRN and max pool), the same batch, SGD momentum.

    python benchmarks/train_overhead.py             # CPU: ZFNet width 0.25, 64 px, batch 64, fp32
    python benchmarks/train_overhead.py --size 224 --width 1.0 --batch 256 --precision bf16-mixed  # GPU

Reports ms/step of each, alternating the order over ``--repeats`` rounds (best kept), and the ratio
zflight / plain (goal on CPU: at most 1.05).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_train import environment, parse_args, run_plain, run_zflight  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    args = parse_args(
        ["--variants", "plain-fast,zflight", *(argv if argv is not None else sys.argv[1:])]
    )
    args.repeats = max(args.repeats, 3)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    g = torch.Generator().manual_seed(0)
    images = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
    labels = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
    best = {"plain": float("inf"), "zflight": float("inf")}
    for r in range(args.repeats):
        order = ["plain", "zflight"] if r % 2 == 0 else ["zflight", "plain"]
        for name in order:
            fn = run_plain if name == "plain" else run_zflight
            best[name] = min(best[name], fn(args, "fast", images, labels))
    print(environment(device))
    print(
        f"ZFNet width {args.width}, {args.size} px, batch {args.batch}, {args.precision}, "
        f"compile={args.compile}, {args.steps} timed steps after {args.warmup}, best of {args.repeats}"
    )
    print(f"{'':<10}{'ms/step':>10}{'img/s':>10}")
    for name, sec in best.items():
        print(f"{name:<10}{sec * 1e3:>10.1f}{args.batch / sec:>10.0f}")
    print(f"zflight / plain step time: {best['zflight'] / best['plain']:.3f}")


if __name__ == "__main__":
    main()
