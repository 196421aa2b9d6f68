"""VisualizationCallback: the one place schedule, probe set, rank discipline, isolation, output and
state rules live. A visual callback subclasses it and implements ``analyze``.

Example:
    >>> class MeanImage(VisualizationCallback):
    ...     name = "mean_image"
    ...     def analyze(self, model, probe, ctx):
    ...         return VizResult(figures={"mean": to_uint8(probe.images.mean(0))})
"""

from __future__ import annotations

import contextlib
import time
import random
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from zflight.callbacks.results import Probe, VizResult
from zflight.callbacks.sinks import ANALYSIS_TIMES, WRITER, write_outputs


class AnalysisContext:
    """What ``analyze`` may use beyond the model and probe: where it runs and how to talk to other ranks."""

    def __init__(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, model: nn.Module
    ) -> None:
        self.trainer = trainer
        self.pl_module = pl_module
        self.model = model
        self.epoch = trainer.current_epoch
        self.device = pl_module.device
        self.rank = trainer.global_rank
        self.world_size = trainer.world_size

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate ``t`` from every rank along dim 0 (same shape on each). Call on every rank."""
        if self.world_size == 1:
            return t
        return self.pl_module.all_gather(t).flatten(0, 1)

    def autocast(self) -> contextlib.AbstractContextManager:
        """The trainer's precision context (bf16/fp16 autocast when it trains that way)."""
        return self.trainer.precision_plugin.forward_context()


def network_of(pl_module: nn.Module) -> nn.Module:
    """The plain network inside a LightningModule (its ``model`` attribute), else the module itself."""
    model = getattr(pl_module, "model", pl_module)
    return getattr(model, "_orig_mod", model)


class VisualizationCallback(pl.Callback):
    """Base of every visual callback: decides when to run, on what, and where the output goes.

    Args:
        every_n_epochs: run at the end of validation when ``(epoch + 1) % every_n_epochs == 0``.
        on_first_epoch: also run after the first epoch's validation.
        on_last_epoch: also run after the last epoch's validation (``trainer.max_epochs``).
        num_probes: size of the fixed probe set drawn from the validation data.
        probe_seed: seed of the probe selection.
        strict: re-raise analysis errors instead of warning (for tests).
        grad: run ``analyze`` with gradients enabled (still eval mode; weights untouched).
        name: overrides the class's ``name`` (key prefix and checkpoint ``state_key``) so
            several instances can coexist.
        background_output: encode and write figures on a background thread (``sinks.WRITER``);
            everything is written by the end of ``fit``/``validate``, also after an error.

    Raises:
        ValueError: for a non-positive ``every_n_epochs`` or ``num_probes``.
    """

    name: str = "viz"

    def __init__(
        self,
        every_n_epochs: int = 1,
        on_first_epoch: bool = False,
        on_last_epoch: bool = True,
        num_probes: int = 8,
        probe_seed: int = 0,
        strict: bool = False,
        grad: bool = False,
        name: str | None = None,
        background_output: bool = True,
    ) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be >= 1, got {every_n_epochs}")
        if num_probes < 1:
            raise ValueError(f"num_probes must be >= 1, got {num_probes}")
        self.every_n_epochs = every_n_epochs
        self.on_first_epoch = on_first_epoch
        self.on_last_epoch = on_last_epoch
        self.num_probes = num_probes
        self.probe_seed = probe_seed
        self.strict = strict
        self.grad = grad
        self.background_output = background_output
        if name is not None:
            self.name = name
        self.current_batch: Any = None
        self.logged_epochs: list[int] = []
        self._probe: Probe | None = None
        self._handles: list[Any] = []
        self._stream_errors: list[str] = []

    # ---- what subclasses implement -------------------------------------------------------------
    def analyze(self, model: nn.Module, probe: Probe, ctx: AnalysisContext) -> VizResult | None:
        """Turn the model and probe batch into figures and scalars. Runs on every rank."""
        raise NotImplementedError

    def stream_hooks(self, model: nn.Module) -> list[tuple[nn.Module, Callable]]:
        """Forward hooks to run during a scheduled validation epoch (default: none)."""
        return []

    def reset_stream(self) -> None:
        """Clear streaming state before a scheduled validation epoch."""

    # ---- schedule ------------------------------------------------------------------------------
    @property
    @override
    def state_key(self) -> str:
        return f"{type(self).__qualname__}[{self.name}]"

    def _should_run(self, trainer: pl.Trainer) -> bool:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return False
        if trainer.state.fn == "validate":
            return True
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every_n_epochs == 0:
            return True
        if self.on_first_epoch and epoch == 0:
            return True
        return bool(self.on_last_epoch and trainer.max_epochs and epoch == trainer.max_epochs - 1)

    # ---- Lightning hooks -----------------------------------------------------------------------
    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        if not self._should_run(trainer):
            return
        self._stream_errors = []
        self.reset_stream()
        for module, fn in self.stream_hooks(network_of(pl_module)):
            self._handles.append(module.register_forward_hook(self._guarded(fn)))

    @override
    def on_validation_batch_start(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._handles:
            self.current_batch = batch

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        self.current_batch = None
        if self._should_run(trainer):
            self._run(trainer, pl_module)

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if trainer.is_global_zero:  # W&B image logs prepared by the writer thread
            WRITER.drain(raise_errors=self.strict)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        WRITER.flush(raise_errors=self.strict)

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._remove_hooks()
        WRITER.flush(raise_errors=False)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"logged_epochs": list(self.logged_epochs)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.logged_epochs = list(state_dict.get("logged_epochs", []))

    # ---- running one analysis ------------------------------------------------------------------
    def probe(self, trainer: pl.Trainer, device: torch.device) -> Probe:
        """The probe set, built once from the validation data set and cached."""
        if self._probe is None:
            dm = trainer.datamodule
            dataset = getattr(dm, "val_dataset", None) if dm is not None else None
            if dataset is None:
                loaders = trainer.val_dataloaders
                loader = loaders[0] if isinstance(loaders, (list, tuple)) else loaders
                dataset = loader.dataset
            info = {k: getattr(dm, k) for k in ("mean", "std", "class_names") if hasattr(dm, k)}
            self._probe = Probe.from_dataset(dataset, self.num_probes, self.probe_seed, **info)
        return self._probe.to(device)

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        started = time.perf_counter()
        model = network_of(pl_module)
        error: str | None = None
        result: VizResult | None = None
        if self._stream_errors:
            error = self._stream_errors[0]
        else:
            try:
                ctx = AnalysisContext(trainer, pl_module, model)
                probe = self.probe(trainer, pl_module.device)
                with isolated(model), torch.enable_grad() if self.grad else torch.no_grad():
                    result = self.analyze(model, probe, ctx)
            except Exception as exc:
                if self.strict:
                    raise
                error = "".join(traceback.format_exception(exc))
        if error is not None:
            if self.strict:
                raise RuntimeError(f"{self.name} failed:\n{error}")
            rank_zero_warn(
                f"visual callback {self.name!r} failed at epoch {trainer.current_epoch}; "
                f"training continues.\n{error}"
            )
            return
        self.logged_epochs.append(trainer.current_epoch)
        if trainer.is_global_zero and result is not None:
            try:
                write_outputs(trainer, self.name, result, self.background_output, self.strict)
            except Exception as exc:
                if self.strict:
                    raise
                rank_zero_warn(f"could not write the output of {self.name!r}: {exc!r}")
        ANALYSIS_TIMES.record(self.name, time.perf_counter() - started)

    def _guarded(self, fn: Callable) -> Callable:
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._stream_errors:
                return
            try:
                fn(module, inputs, output)
            except Exception as exc:
                if self.strict:
                    raise
                self._stream_errors.append("".join(traceback.format_exception(exc)))

        return hook

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


@contextlib.contextmanager
def isolated(model: nn.Module) -> Iterator[None]:
    """Eval mode inside; afterwards restore every module's mode, hooks added inside, the parameters'
    ``requires_grad`` and ``.grad``, and the torch / CUDA / NumPy / Python RNG states."""
    modes = {m: m.training for m in model.modules()}
    hook_keys = {m: {a: set(getattr(m, a)) for a in _HOOK_DICTS} for m in model.modules()}
    params = [(p, p.requires_grad, p.grad) for p in model.parameters()]
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())
    cuda_rng = (
        torch.cuda.get_rng_state_all()
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else None
    )
    model.eval()
    try:
        yield
    finally:
        for m, training in modes.items():
            m.training = training
        for m, keys in hook_keys.items():
            for attr, before in keys.items():
                hooks = getattr(m, attr)
                for k in set(hooks) - before:
                    del hooks[k]
        for p, requires_grad, grad in params:
            p.requires_grad_(requires_grad)
            p.grad = grad
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])
        random.setstate(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
