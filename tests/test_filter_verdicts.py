"""Filter verdicts on a real (short) run of the default net and optimiser: conv2 learns while
moving little, and the verdicts say so; the same conv2 put back to its start is untrained."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F


@pytest.mark.slow
def test_default_recipe_conv2_is_ok_while_its_projections_change_and_untrained_when_frozen(
    tmp_path,
):
    from zflight.ablation_measure import filter_start, layer_report, load_network
    from zflight.analysis.deconvnet import Deconvnet
    from zflight.run.checkpoints import read_checkpoint
    from zflight.train import train

    run = train(
        [
            f"run_dir={tmp_path / 'run'}",
            "logger=csv",
            "trainer.progress=false",
            "trainer.max_epochs=3",
            "seed=1",
            "data.train_size=4000",
            "data.batch_size=32",
            "optim.schedule=none",  # the default one-cycle squeezed into 3 short epochs stalls
            "model.conv1_std=null",  # ... and so does conv1's small start, in 375 steps
            "data.val_size=256",
            "data.cache_dir=null",
            "callbacks=none",
            "callbacks.filters._target_=zflight.callbacks.filter_health.FilterHealth",
            "callbacks.filters.layers=[conv1,conv2]",
        ]
    )
    assert run["val_acc1"] > 0.25  # it learned something (chance: 0.125)
    ckpt = read_checkpoint(run["last_ckpt"], "checkpoint")
    model, _ = load_network(ckpt)
    start = filter_start(ckpt)
    conv2 = layer_report(model, "conv2", start, None)
    assert conv2.cos_start is not None and conv2.movement is not None
    # conv2 stays close to its Kaiming start: a cosine threshold of 0.5 would call all untrained
    assert float(conv2.cos_start.min()) > 0.5
    counts = conv2.counts()
    assert counts["ok"] >= 0.75 * len(conv2.rms) and counts["untrained"] <= 0.1 * len(conv2.rms)
    # ... while what its units respond to has changed: the deconvnet projections of the same
    # units at the same positions, now and with the start's trunk, differ
    trunk = model.features[:5]
    first = copy.deepcopy(trunk)
    first.load_state_dict(start["initial_trunk"])
    images = torch.randn(8, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        acts = trunk(images)
    channels = acts.flatten(2).amax(2).argmax(1)
    positions = acts.flatten(2)[torch.arange(8), channels].argmax(1)
    now = Deconvnet(trunk).project(images, "conv2", channels, positions)
    then = Deconvnet(first).project(images, "conv2", channels, positions)
    similarity = F.cosine_similarity(now.flatten(1), then.flatten(1), dim=1)
    assert float(similarity.median()) < 0.95
    # conv2 put back to its start (frozen there): untrained throughout
    with torch.no_grad():
        model.features.conv2.weight.copy_(start["initial"]["conv2"])
    frozen = layer_report(model, "conv2", start, None)
    assert frozen.counts()["untrained"] == len(frozen.rms)
