"""The Lightning strategy for a run: ``"auto"`` for one process, a tuned ``DDPStrategy`` for more.

The DDP options that matter for ZFNet (62.4M parameters, 94% of them in fc6-fc8, whose gradients
are ready first in the backward pass) are exposed as the ``trainer.ddp`` config group; see
``docs/scaling.md`` for what each one buys.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from lightning.pytorch.strategies import DDPStrategy, Strategy
from typing_extensions import override

from zflight.callbacks.process_group import destroy_process_group_at_exit

DDP_DEFAULTS: dict[str, Any] = {
    # Gradients live inside the all-reduce buckets: saves one copy and 250 MB per GPU.
    "gradient_as_bucket_view": True,
    # Same graph every step; lets DDP skip per-step bookkeeping and reorder buckets once.
    "static_graph": False,
    # Bucket size in MB. fc6's 151 MB gradient is its own bucket whatever this is.
    "bucket_cap_mb": 25,
    "find_unused_parameters": False,
    # "none", "fp16" or "bf16": all-reduce gradients in half precision (half the bytes).
    "comm_hook": "none",
    # None picks nccl with CUDA, gloo without.
    "backend": None,
}


class CleanExitDDPStrategy(DDPStrategy):
    """``DDPStrategy`` whose process group is destroyed before the interpreter exits.

    Without it a gloo rank aborts at exit now and then (SIGABRT after ``fit`` returned); see
    ``zflight.callbacks.process_group``.
    """

    @override
    def setup_distributed(self) -> None:
        super().setup_distributed()
        destroy_process_group_at_exit()


def _comm_hooks() -> dict[str, Callable | None]:
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    return {
        "none": None,
        "fp16": default_hooks.fp16_compress_hook,
        "bf16": default_hooks.bf16_compress_hook,
    }


def ddp_options(ddp: Mapping[str, Any] | None) -> dict[str, Any]:
    """``DDP_DEFAULTS`` updated with ``ddp``; unknown keys and bad values raise ``ValueError``."""
    given = dict(ddp or {})
    unknown = sorted(set(given) - set(DDP_DEFAULTS))
    if unknown:
        raise ValueError(
            f"trainer.ddp has no key(s) {', '.join(unknown)}; valid: {', '.join(DDP_DEFAULTS)}"
        )
    opts = {**DDP_DEFAULTS, **given}
    if opts["comm_hook"] not in _comm_hooks():
        raise ValueError(
            f"trainer.ddp.comm_hook must be one of {', '.join(_comm_hooks())}; "
            f"got {opts['comm_hook']!r}"
        )
    if float(opts["bucket_cap_mb"]) <= 0:
        raise ValueError(f"trainer.ddp.bucket_cap_mb must be > 0; got {opts['bucket_cap_mb']}")
    return opts


def process_count(devices: int, num_nodes: int) -> int:
    """Processes in the run; ``devices=-1`` means every visible GPU (one process without GPUs)."""
    if devices == -1:
        devices = max(torch.cuda.device_count(), 1)
    if devices < 1 or num_nodes < 1:
        raise ValueError(
            f"devices and num_nodes must be >= 1 (or devices=-1); got {devices}, {num_nodes}"
        )
    return devices * num_nodes


def build_strategy(
    devices: int, num_nodes: int, ddp: Mapping[str, Any] | None, start_method: str = "popen"
) -> str | Strategy:
    """``"auto"`` for a single process, else a ``DDPStrategy`` configured from ``ddp``.

    The backend is NCCL when CUDA is available and gloo otherwise (CPU runs and tests), unless
    ``ddp["backend"]`` names one. ``start_method="spawn"`` starts the ranks with
    ``torch.multiprocessing`` (for callers that are not a script, such as tests).
    """
    opts = ddp_options(ddp)
    if process_count(devices, num_nodes) == 1:
        return "auto"
    backend = opts["backend"] or ("nccl" if torch.cuda.is_available() else "gloo")
    return CleanExitDDPStrategy(
        start_method=start_method,
        process_group_backend=backend,
        ddp_comm_hook=_comm_hooks()[opts["comm_hook"]],
        gradient_as_bucket_view=bool(opts["gradient_as_bucket_view"]),
        static_graph=bool(opts["static_graph"]),
        bucket_cap_mb=float(opts["bucket_cap_mb"]),
        find_unused_parameters=bool(opts["find_unused_parameters"]),
    )
