"""Small visual callbacks used by the framework tests (importable by ``_target_`` in subprocesses)."""

from __future__ import annotations

import numpy as np
import torch

from zflight.callbacks.base import VisualizationCallback
from zflight.callbacks.results import Figure, VizResult


class Recording(VisualizationCallback):
    """Records when it ran; logs the probe grid, a gathered count and its own history as state."""

    name = "recording"

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.history: list[int] = []

    def analyze(self, model, probe, ctx):
        self.history.append(ctx.epoch)
        gathered = ctx.all_gather(torch.ones(3, device=ctx.device) * (ctx.rank + 1))
        images = probe.display()
        return VizResult(
            figures={
                "probe": [Figure(im, f"label {int(y)}") for im, y in zip(images, probe.labels)],
                "first": images[0],
            },
            scalars={
                "gathered_sum": float(gathered.sum()),
                "world": float(ctx.world_size),
                "probe_checksum": float(probe.images.double().sum()),
            },
        )

    def state_dict(self):
        return {**super().state_dict(), "history": list(self.history)}

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        self.history = list(state_dict["history"])


class Meddling(VisualizationCallback):
    """Changes modes, adds a hook, draws random numbers and touches grads, then fails (or not)."""

    name = "meddling"

    def __init__(self, fail: bool = True, **kwargs) -> None:
        super().__init__(**kwargs)
        self.fail = fail

    def analyze(self, model, probe, ctx):
        model.train()
        model.features.conv1.register_forward_hook(lambda m, i, o: o * 0)
        torch.rand(100)
        np.random.rand(10)
        for p in model.parameters():
            p.requires_grad_(False)
        with torch.enable_grad():
            x = probe.images.clone().requires_grad_(True)
            model(x).sum().backward()
        if self.fail:
            raise RuntimeError("analysis exploded")
        return VizResult(scalars={"ok": 1.0})


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class FailingOnRank(VisualizationCallback):
    """Fails on one rank only: in ``analyze`` before its gather (``where="analyze"``), in a stream
    hook during validation (``"hook"``), or by gathering a shape that differs per rank (``"shape"``)."""

    name = "failing"

    def __init__(self, where: str = "analyze", rank: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        self.where, self.rank = where, rank

    def stream_hooks(self, model):
        def hook(module, inputs, output):
            if _rank() == self.rank:
                raise RuntimeError(f"hook failed on rank {self.rank}")

        return [(model.features.conv1, hook)] if self.where == "hook" else []

    def analyze(self, model, probe, ctx):
        if self.where == "analyze" and ctx.rank == self.rank:
            raise RuntimeError(f"analysis failed on rank {self.rank}")
        rows = ctx.rank + 2 if self.where == "shape" else 2
        ctx.all_gather(torch.ones(rows, 3, device=ctx.device))
        return VizResult(scalars={"ok": 1.0})
