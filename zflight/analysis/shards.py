"""Work split across ranks: each rank computes one contiguous share of N items, and the shares are
gathered back into the N results every rank would have computed alone.

Shares are ``ceil(N / world_size)`` long on every rank (a collective needs equal shapes): the last
rank's is padded with item 0, and the padding is dropped after the gather.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def share(n: int, rank: int, world_size: int) -> list[int]:
    """The item indices rank ``rank`` computes: its contiguous share, padded with item 0."""
    per = -(-n // world_size)
    mine = list(range(rank * per, min(n, (rank + 1) * per)))
    return mine + [0] * (per - len(mine))


def sharded(
    fn: Callable[[list[int]], Sequence[Tensor]],
    n: int,
    rank: int = 0,
    world_size: int = 1,
    all_gather: Callable[[Tensor], Tensor] | None = None,
) -> list[Tensor]:
    """``fn(indices)`` on this rank's share; its tensors (dim 0 = one row per index) gathered.

    ``all_gather`` concatenates along dim 0 from every rank in rank order and is called once per
    returned tensor, on every rank. With one rank ``fn`` runs on all items, no collective.
    """
    if world_size == 1:
        return list(fn(list(range(n))))
    if all_gather is None:
        raise ValueError("world_size > 1 needs all_gather")
    return [all_gather(t.contiguous())[:n] for t in fn(share(n, rank, world_size))]


def index(t: Tensor, rows: Sequence[int]) -> Tensor:
    """``t[rows]`` with ``rows`` a list of indices on ``t``'s device."""
    return t[torch.as_tensor(rows, device=t.device)]
