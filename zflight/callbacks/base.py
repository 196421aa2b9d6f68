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
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from typing_extensions import override

from zflight.analysis.cost import CountFlops, forward_flops
from zflight.analysis.stopping import StopRequested, check_stop, stop_requested
from zflight.callbacks.costs import COSTS
from zflight.callbacks.gallery_index import flush_galleries
from zflight.callbacks.isolation import isolated, nonfinite_parameters
from zflight.callbacks.process_group import destroy_process_group_at_exit
from zflight.callbacks.ranks import GatherMismatch, PeerFailed, RankAgreement, report_failure
from zflight.callbacks.results import Probe, VizResult
from zflight.callbacks.scoring import validation_dataset
from zflight.callbacks.sinks import WRITER, write_outputs

__all__ = ["AnalysisContext", "VisualizationCallback", "isolated", "network_of"]


class AnalysisContext:
    """What ``analyze`` may use beyond the model and probe: where it runs and how to talk to other ranks."""

    def __init__(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        model: nn.Module,
        agreement: RankAgreement | None = None,
        name: str = "viz",
    ) -> None:
        self.trainer = trainer
        self.pl_module = pl_module
        self.model = model
        self.epoch = trainer.current_epoch
        self.device = pl_module.device
        self.rank = trainer.global_rank
        self.world_size = trainer.world_size
        self.name = name
        self.agreement = agreement or rank_agreement(trainer, pl_module)

    def all_gather(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate ``t`` from every rank along dim 0 (same shape on each). Call on every rank.

        The ranks first agree that none has failed and that the shapes match; otherwise the
        analysis stops on every rank (no rank is left waiting in the gather).
        """
        if self.world_size == 1:
            return t
        try:
            failed = self.agreement.agree(True, t)
        except GatherMismatch as exc:
            raise GatherMismatch(f"visual callback {self.name!r}: {exc}") from None
        if failed:
            raise PeerFailed(failed)
        return self.pl_module.all_gather(t).flatten(0, 1)

    @property
    def stop_requested(self) -> bool:
        """True once the run was asked to stop (a signal): end the analysis at the next chunk."""
        return stop_requested()

    def check_stop(self) -> None:
        """Raise ``StopRequested`` when the run was asked to stop; call between chunks of work."""
        check_stop()

    def autocast(self) -> contextlib.AbstractContextManager:
        """The trainer's precision context (bf16/fp16 autocast when it trains that way)."""
        return self.trainer.precision_plugin.forward_context()


def rank_agreement(trainer: pl.Trainer, pl_module: pl.LightningModule) -> RankAgreement:
    """The agreement of one analysis over the trainer's ranks."""
    return RankAgreement(trainer.strategy.all_gather, trainer.world_size, pl_module.device)


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
        self._stream_errors: list[Exception] = []
        self._stream_seconds = 0.0
        self._unit: tuple[Any, int] | None = None  # (input shape, FLOPs of one forward at it)

    # ---- what subclasses implement -------------------------------------------------------------
    def analyze(self, model: nn.Module, probe: Probe, ctx: AnalysisContext) -> VizResult | None:
        """Turn the model and probe batch into figures and scalars. Runs on every rank."""
        raise NotImplementedError

    def stream_hooks(self, model: nn.Module) -> list[tuple[nn.Module, Callable]]:
        """Forward hooks to run during a scheduled validation epoch (default: none)."""
        return []

    def reset_stream(self) -> None:
        """Clear streaming state before a scheduled validation epoch."""

    def estimate_forwards(
        self, image_shape: tuple[int, ...], world_size: int, masks: bool
    ) -> float:
        """Forward-pass equivalents one run of this analysis is expected to cost on one rank, at
        ``image_shape`` (C, H, W), split over ``world_size`` ranks, with or without object masks to
        score against (the ledger measures the true cost; this sizes the schedule to a budget)."""
        return float(self.num_probes)

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
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:  # whatever strategy started the ranks (see process_group)
            destroy_process_group_at_exit()

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove_hooks()
        if not self._should_run(trainer):
            return
        self._stream_errors = []
        self._stream_seconds = 0.0
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
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        # forwards between batches (another callback's analysis) are not validation batches
        self.current_batch = None

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
        if trainer.is_global_zero:
            flush_galleries()  # the last, debounced gallery update

    @override
    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._remove_hooks()
        WRITER.flush(raise_errors=False)
        if trainer.is_global_zero:
            flush_galleries()

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
            found = validation_dataset(trainer)
            if found is None:
                raise ValueError("no validation data set to draw the probe images from")
            dataset, info = found
            self._probe = Probe.from_dataset(dataset, self.num_probes, self.probe_seed, **info)
        return self._probe.to(device)

    def _run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        started = time.perf_counter()
        model = network_of(pl_module)
        agreement = rank_agreement(trainer, pl_module)
        nonfinite = nonfinite_parameters(model)
        if agreement.agree(not nonfinite and not stop_requested()):
            if not nonfinite:  # weights are equal on every rank: a rank was asked to stop
                return
            rank_zero_warn(
                f"visual callback {self.name!r} skipped at epoch {trainer.current_epoch}: "
                f"non-finite weights ({', '.join(nonfinite[:3]) or 'on another rank'}); "
                "nothing drawn."
            )
            return
        error = self._stream_errors[0] if self._stream_errors else None
        mismatch: GatherMismatch | None = None
        result: VizResult | None = None
        counted, unit = CountFlops(), 0
        if error is None:
            try:
                ctx = AnalysisContext(trainer, pl_module, model, agreement, self.name)
                probe = self.probe(trainer, pl_module.device)
                with isolated(model), torch.enable_grad() if self.grad else torch.no_grad():
                    unit = self._forward_unit(model, probe)
                    with CountFlops() as counted:
                        result = self.analyze(model, probe, ctx)
            except (PeerFailed, StopRequested):
                pass
            except GatherMismatch as exc:
                mismatch = exc
            except Exception as exc:
                error = exc
        stopping = stop_requested()
        failed = agreement.agree(error is None and not stopping)  # every rank ends here
        if failed and (stopping or stop_requested()):
            return  # stopped by a signal: nothing to report, nothing drawn
        if failed:
            report_failure(self.name, trainer, failed, error, mismatch, self.strict)
            return
        self.logged_epochs.append(trainer.current_epoch)
        if trainer.is_global_zero and result is not None:
            try:
                write_outputs(trainer, self.name, result, self.background_output, self.strict)
            except Exception as exc:
                if self.strict:
                    raise
                rank_zero_warn(f"could not write the output of {self.name!r}: {exc!r}")
        seconds = time.perf_counter() - started + self._stream_seconds
        COSTS.record(self.name, seconds, counted.flops, unit)

    def _forward_unit(self, model: nn.Module, probe: Probe) -> int:
        """FLOPs of one forward pass of ``model`` on one probe image (cached per input shape)."""
        if probe is None:  # an analysis that takes no probe images
            return 0
        shape = tuple(probe.images.shape[1:])
        if self._unit is None or self._unit[0] != shape:
            self._unit = (shape, forward_flops(model, shape, probe.images.device))
        return self._unit[1]

    def _guarded(self, fn: Callable) -> Callable:
        """A forward hook that records the first error instead of raising inside validation (an
        error on one rank only would leave the others waiting); ``_run`` reports it."""

        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._stream_errors:
                return
            started = time.perf_counter()
            try:
                fn(module, inputs, output)
            except Exception as exc:
                self._stream_errors.append(exc)
            self._stream_seconds += time.perf_counter() - started

        return hook

    def _remove_hooks(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
