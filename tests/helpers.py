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
