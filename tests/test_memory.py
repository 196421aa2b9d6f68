"""Memory stays flat over many analysis epochs: every default visual callback, 50 times, on a small
model; the process's resident memory (and CUDA's allocated memory, where there is a GPU) after the
5th and the 50th analysis differ by a few percent at most."""

from __future__ import annotations

import gc
import os
import warnings

import pytest
import torch

from tests.conftest import tiny_overrides
from zflight.callbacks.ledger import CostLedger

EPOCHS = 50


def rss_bytes() -> int:
    """Resident memory after freed heap is handed back (glibc's ``malloc_trim``), so that what is
    measured is what is still held, not what the allocator keeps for reuse."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def analysis_epochs(tmp_path, accelerator: str, measure) -> dict[int, int]:
    import lightning.pytorch as pl

    from zflight.config import load_config
    from zflight.run import build

    cfg = load_config(
        [
            *tiny_overrides(tmp_path / "run", f"trainer.accelerator={accelerator}"),
            "callbacks=default",
            "data.val_size=24",
            # every default callback, each at a few units, images and steps: many epochs quickly
            "callbacks.deconv.layers=[conv1,conv5]",
            "callbacks.deconv.features_per_layer=2",
            "callbacks.deconv.k=2",
            "callbacks.evolution.layers=[conv1,conv5]",
            "callbacks.evolution.features_per_layer=2",
            "callbacks.actmax.steps=2",
            "callbacks.actmax.units_per_layer=2",
            "callbacks.invariance.num_values=3",
            "callbacks.invariance.num_images=2",
            "callbacks.occlusion.score_probes=4",
            "callbacks.heatmaps.score_probes=4",
            *[f"callbacks.{n}.num_probes=4" for n in ("occlusion", "heatmaps", "filters")],
            *[f"callbacks.{n}.background_output=false" for n in ("deconv", "occlusion")],
        ]
    )
    callbacks = build.build_callbacks(cfg)
    datamodule = build.build_datamodule(cfg)
    module = build.build_module(
        cfg, build.build_model(cfg, datamodule.num_classes), datamodule.num_classes
    )
    trainer = pl.Trainer(
        default_root_dir=str(tmp_path / "run"),
        logger=False,
        callbacks=[*callbacks, CostLedger()],
        accelerator=accelerator,
        devices=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=False,  # as zflight visualize: gradient-based analyses enable gradients
    )
    seen = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for epoch in range(1, EPOCHS + 1):
            trainer.validate(module, datamodule=datamodule, verbose=False)
            if epoch in (5, EPOCHS):
                gc.collect()
                seen[epoch] = measure()
    return seen


@pytest.mark.slow
def test_resident_memory_is_flat_over_50_analysis_epochs(tmp_path, one_thread):
    seen = analysis_epochs(tmp_path, "cpu", rss_bytes)
    growth = (seen[EPOCHS] - seen[5]) / seen[5]
    print(
        f"RSS after epoch 5: {seen[5] / 2**20:.1f} MiB, after epoch {EPOCHS}: "
        f"{seen[EPOCHS] / 2**20:.1f} MiB ({100 * growth:+.2f}%)"
    )
    assert abs(growth) < 0.03, f"RSS {seen[5] / 2**20:.0f} MiB -> {seen[EPOCHS] / 2**20:.0f} MiB"


@pytest.mark.slow
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_memory_is_flat_over_50_analysis_epochs(tmp_path):
    seen = analysis_epochs(tmp_path, "gpu", torch.cuda.memory_allocated)
    assert abs(seen[EPOCHS] - seen[5]) <= 0.03 * seen[5] + (1 << 20), seen
