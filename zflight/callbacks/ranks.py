"""Rank agreement for visual callbacks: no rank ever waits in a collective that another rank left.

Every rank of an analysis calls ``RankAgreement.agree`` at the same points: once inside each
``AnalysisContext.all_gather`` (before the data moves) and once at the end. A rank whose analysis
raised calls it with ``ok=False`` in place of its next call. One fixed-size status vector per call
carries each rank's success and the shape and dtype it is about to gather, so one collective both
tells every rank which ranks failed and lets all of them refuse a gather of unequal shapes, which
gloo would otherwise answer by aborting the process. Once a failure is known to every rank no rank
makes another call, so the number of collectives matches on every rank.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch

_MAX_DIMS = 8
_DTYPES = (
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
    torch.uint8,
    torch.int8,
    torch.int16,
    torch.int32,
    torch.int64,
    torch.bool,
)


class PeerFailed(Exception):
    """Another rank's analysis failed; this rank stops its own (internal to the base class)."""


class GatherMismatch(RuntimeError):
    """``all_gather`` was called with different shapes or dtypes on the ranks (raised on every rank)."""


class RankAgreement:
    """The collective bookkeeping of one analysis on one rank.

    Args:
        gather: stacks a tensor from every rank along a new dim 0 (``strategy.all_gather``).
        world_size: number of ranks; with one rank no collective is made.
        device: where the status vectors live (the backend's device).
    """

    def __init__(
        self, gather: Callable[[torch.Tensor], torch.Tensor], world_size: int, device: torch.device
    ) -> None:
        self.gather, self.world_size, self.device = gather, world_size, device
        self.failed_ranks: list[int] = []
        self.settled = False

    def agree(self, ok: bool, t: torch.Tensor | None = None) -> list[int]:
        """The ranks that failed (empty when all are fine); ``t`` is the tensor about to be gathered.

        Raises:
            GatherMismatch: every rank is fine but the tensors to gather differ in shape or dtype.
        """
        if self.settled:
            return self.failed_ranks
        if self.world_size == 1:
            statuses = _status(ok, t)[None]
        else:
            statuses = self.gather(_status(ok, t).to(self.device)).reshape(self.world_size, -1)
        statuses = statuses.cpu()
        self.failed_ranks = statuses[:, 0].nonzero().flatten().tolist()
        if self.failed_ranks:
            self.settled = True
            return self.failed_ranks
        if t is not None and not bool((statuses == statuses[0]).all()):
            self.settled = True
            self.failed_ranks = list(range(self.world_size))
            shapes = ", ".join(f"rank {r} {_describe(s)}" for r, s in enumerate(statuses.tolist()))
            raise GatherMismatch(
                f"all_gather got different shapes or dtypes on the ranks ({shapes}); "
                "every rank must pass the same shape (pad to a common size)"
            )
        return []


def report_failure(
    name: str,
    trainer: Any,
    failed: list[int],
    error: Exception | None,
    mismatch: GatherMismatch | None,
    strict: bool,
) -> None:
    """Print an analysis failure the ranks agreed on, or raise it on every rank when ``strict``.

    The failing rank prints its own traceback (``rank_zero_warn`` would hide it on rank > 0);
    rank 0 names the failing ranks when it did not fail itself.
    """
    where = f"visual callback {name!r} failed at epoch {trainer.current_epoch}"
    ranks = ", ".join(map(str, failed))
    if strict:
        if error is not None or mismatch is not None:
            raise error or mismatch
        raise RuntimeError(f"{where} on rank {ranks} (its error is printed by that rank)")
    skipped = "skipped on every rank for this epoch; training continues"
    if error is not None:
        prefix = f"[rank {trainer.global_rank}] " if trainer.world_size > 1 else ""
        text = "".join(traceback.format_exception(error))
        _print(f"{prefix}{where}; {skipped}.\n{text}")
    elif mismatch is not None and trainer.global_rank == 0:
        _print(f"{mismatch}; {skipped}.")
    elif trainer.global_rank == 0:
        _print(f"{where} on rank {ranks} (its error is printed by that rank); {skipped}.")


def _print(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _status(ok: bool, t: torch.Tensor | None) -> torch.Tensor:
    """[failed, dtype code, ndim, size_0 .. size_7] (-1 where unused)."""
    s = torch.full((3 + _MAX_DIMS,), -1, dtype=torch.long)
    s[0] = int(not ok)
    if t is not None:
        s[1] = _DTYPES.index(t.dtype) if t.dtype in _DTYPES else len(_DTYPES)
        s[2] = t.ndim
        dims = list(t.shape[:_MAX_DIMS])
        s[3 : 3 + len(dims)] = torch.tensor(dims, dtype=torch.long)
    return s


def _describe(status: list[int]) -> str:
    code, ndim = status[1], status[2]
    dtype = str(_DTYPES[code]).removeprefix("torch.") if 0 <= code < len(_DTYPES) else "other"
    return f"{tuple(status[3 : 3 + min(ndim, _MAX_DIMS)])} {dtype}"
