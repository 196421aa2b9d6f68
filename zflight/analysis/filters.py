"""Filter health of a conv layer (Zeiler & Fergus, Fig. 6): what training did to each filter.

Pure functions of a conv weight (C_out, C_in, k, k), plus optional activation statistics, the
filters' initial weights and the statuses of the previous analysis, computed in fp32/fp64 whatever
the weight's dtype. Per filter: RMS; movement, as the share of its energy outside its start's
direction (1 - cos^2 to the start); structure, as its spectral entropy against white noise of the
same shape (needs no start); peak frequency, band shares and aliasing on the absolute axis of
``zflight.analysis.spectrum``; duplicates by cosine. Statuses, in precedence:

- dead: collapsed (RMS below ``dead_fraction`` of the layer's 90th-percentile RMS) or never
  positive on the data;
- untrained: kept its random start. Calibrated per layer against what learning does to that
  layer: its movement is below ``untrained_fraction`` of the layer's median movement (kept its
  start while its layer learned), or below a floor. A layer on the image's colours (conv1) is its
  own picture, and learning moves it most of the way (median 0.93 in the default run): its floor is
  0.75, cosine 0.5 to the start, where the start still holds a quarter of the energy and shows.
  A deeper layer learns while moving less (conv2 in the default run: 0.04 after one epoch, 0.4
  after seven, with the arcs and corners its deconvnet projections show): its floor is 0.001, a
  filter frozen there;
- aliased: trained, with a structured pattern and more than ``alias_share`` of the energy training
  gave it (the part orthogonal to its start; the whole filter without a start) above the layer's
  Nyquist frequency 1/(2 stride): a Gabor at 0.2 cycles/px reads aliased at stride 4 and ok at
  stride 2. A random start is above Nyquist too (0.93 of white noise's energy at stride 4), but it
  is not what training did;
- duplicate: cosine above a threshold with an earlier filter;
- ok.

A status changes only when its value crosses the threshold by a margin (``hysteresis``, relative,
both ways) if the previous statuses are given: a value that hovers at a threshold does not flap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from zflight.analysis.filter_metrics import (
    cosine_matrix,
    cosine_to,
    duplicates,
    effective_rank,
    filter_rms,
    movement,
    orthogonal_to,
    positive_counts,
)
from zflight.analysis.spectrum import (
    BAND_EDGES,
    BANDS,
    aliasing_scores,
    band_shares,
    noise_aliasing,
    noise_band_shares,
    noise_entropy_floor,
    peak_frequency,
    power_spectra,
    spectral_entropy,
)

FIRST_LAYER_FLOOR = 0.75  # movement (1 - cos^2) under which a filter on the image shows its start
DEEP_LAYER_FLOOR = 1e-3  # ... under which a deeper filter is frozen at its start
STATUSES = ("ok", "dead", "untrained", "aliased", "duplicate")
OK, DEAD, UNTRAINED, ALIASED, DUPLICATE = range(len(STATUSES))


@dataclass
class FilterReport:
    """Per-filter health of one conv layer; ``scalars()`` condenses it to layer-level numbers."""

    kernel: int
    stride: int
    step: float
    rms: torch.Tensor
    cos_start: torch.Tensor | None
    movement: torch.Tensor | None
    untrained_below: float
    aliasing: torch.Tensor
    aliasing_learned: torch.Tensor
    aliasing_noise: float
    bands: torch.Tensor
    bands_noise: torch.Tensor
    peak: torch.Tensor
    entropy: torch.Tensor
    entropy_noise: float
    dead: torch.Tensor
    untrained: torch.Tensor
    aliased: torch.Tensor
    duplicate_of: torch.Tensor
    anti_pairs: list[tuple[int, int, float]]
    effective_rank: float
    at_radius: torch.Tensor
    never_active: torch.Tensor | None = None

    @property
    def duplicate(self) -> torch.Tensor:
        return self.duplicate_of >= 0

    @property
    def structured(self) -> torch.Tensor:
        """(C,) spectral entropy far below white noise's (``noise_entropy_floor``; needs no start)."""
        return self.entropy < self.entropy_noise

    @property
    def status(self) -> torch.Tensor:
        """(C,) one status per filter, by precedence: dead, untrained, aliased, duplicate, ok."""
        s = torch.full_like(self.duplicate_of, OK)
        s[self.duplicate] = DUPLICATE
        s[self.aliased] = ALIASED
        s[self.untrained] = UNTRAINED
        s[self.dead] = DEAD
        return s

    def counts(self) -> dict[str, int]:
        """Filters per status."""
        status = self.status
        return {name: int((status == i).sum()) for i, name in enumerate(STATUSES)}

    def scalars(self) -> dict[str, float]:
        """Status fractions (of all filters, by precedence); ``unstructured`` (share of live filters
        whose spectrum is as flat as white noise's); median cosine to the start and movement; mean
        band shares of the live filters, mid over white noise's (``band_mid_rel``); median peak
        frequency (cycles per input pixel) and share of live filters peaking in the mid band; mean
        share above Nyquist and over white noise's (``aliasing_rel``); median share above Nyquist
        of what training added (``aliasing_learned``; of the whole filter without a start); effective rank; share at the
        RMS radius; never-active share when known."""
        n = len(self.rms)
        counts = self.counts()
        live = ~self.dead
        n_live = max(int(live.sum()), 1)
        mean_alias = float(self.aliasing[live].sum()) / n_live
        peak = self.peak[live]
        out = {name: counts[name] / n for name in STATUSES if name != "ok"}
        out.update(
            {
                "unstructured": float((~self.structured & live).sum()) / n_live,
                "anti_pairs": float(len(self.anti_pairs)),
                **{
                    f"band_{b}": float(self.bands[live, i].sum()) / n_live
                    for i, b in enumerate(BANDS)
                },
                "band_mid_rel": _ratio(
                    float(self.bands[live, 1].sum()) / n_live, float(self.bands_noise[1])
                ),
                "peak_freq": float(peak.median()) if len(peak) else math.nan,
                "peak_mid": float(((peak >= BAND_EDGES[0]) & (peak < BAND_EDGES[1])).sum())
                / n_live,
                "aliasing_mean": mean_alias,
                "aliasing_learned": float(self.aliasing_learned[live].median())
                if bool(live.any())
                else math.nan,
                "aliasing_rel": _ratio(mean_alias, self.aliasing_noise),
                "effective_rank": self.effective_rank,
                "at_radius": float(self.at_radius.float().mean()),
            }
        )
        if self.cos_start is None or self.movement is None:
            del out["untrained"]
        else:
            out["cos_start"] = float(self.cos_start.median())
            out["movement"] = float(self.movement.median())
        if self.never_active is not None:
            out["never_active"] = float(self.never_active.float().mean())
        return out


def _ratio(value: float, reference: float) -> float:
    """value / reference, 0 where the reference is 0 (nothing to compare with)."""
    return value / reference if reference > 0 else 0.0


def _below(
    value: torch.Tensor, limit: float, previous: torch.Tensor | None, status: int, h: float
) -> torch.Tensor:
    """(C,) value < limit, with a dead band when there are previous statuses: a filter that had
    ``status`` keeps it below limit * (1 + h), one that had not needs limit * (1 - h)."""
    if previous is None:
        return value < limit
    was = previous.to(value.device) == status
    return value < torch.where(was, limit * (1 + h), limit * (1 - h))


def _above(
    value: torch.Tensor, limit: float, previous: torch.Tensor | None, status: int, h: float
) -> torch.Tensor:
    """(C,) value > limit, with the dead band of ``_below``: kept above limit * (1 - h)."""
    if previous is None:
        return value > limit
    was = previous.to(value.device) == status
    return value > torch.where(was, limit * (1 - h), limit * (1 + h))


def filter_health(
    weight: torch.Tensor,
    stride: int,
    *,
    step: float = 1.0,
    initial: torch.Tensor | None = None,
    positive: torch.Tensor | None = None,
    observed: int | None = None,
    previous: torch.Tensor | None = None,
    dead_fraction: float = 0.1,
    dead_activity: float = 1e-3,
    untrained_fraction: float = 1 / 3,
    untrained_floor: float | None = None,
    alias_share: float = 0.5,
    structure_z: float = 6.0,
    duplicate_threshold: float = 0.9,
    hysteresis: float = 0.1,
    radius: float = 0.1,
    n_fft: int = 64,
) -> FilterReport:
    """Diagnose every filter of a conv layer with weight (C, C_in, k, k) applied at ``stride``.

    ``step``: input pixels between the layer's taps (1 for conv1), for the absolute frequency axis.
    ``initial``: the filters at the start of training; without it no filter is called untrained
    and aliasing is judged on the whole filter. ``positive``: summed ``positive_counts`` of the
    layer's output on validation data, over ``observed`` entries per channel. ``previous``: the
    statuses of the last analysis; a filter changes status only when its value is ``hysteresis``
    (relative) past the threshold. Dead: RMS below ``dead_fraction`` of the layer's
    90th-percentile RMS, or positive on at most ``dead_activity`` of its entries (never positive
    when ``observed`` is not given): a unit that almost never fires gets almost no gradient. With
    previous statuses a dead unit revives above twice that, a live one dies below half.
    Untrained: movement below ``untrained_fraction`` of the layer's median movement (of the
    filters not dead), or below ``untrained_floor`` (None: 0.75 for 3 input channels, the image's
    colours, else 0.001). Aliased: not dead nor untrained,
    structured (spectral entropy ``structure_z`` standard deviations below white noise's), and more than
    ``alias_share`` of its learned energy above Nyquist. Duplicate: cosine above
    ``duplicate_threshold`` with an earlier filter, among filters neither dead nor untrained. At
    radius: RMS within 0.1% of ``radius``.
    """
    h = hysteresis
    rms = filter_rms(weight)
    collapse = dead_fraction * torch.quantile(rms, 0.9)
    dead = _below(rms, float(collapse), previous, DEAD, h)
    never = None
    if positive is not None:
        positive = positive.to(rms.device)
        never = positive == 0
        if observed:
            share = positive.double() / observed
            limit = torch.full_like(share, dead_activity)
            if previous is not None:  # activity must change by a factor of 2 to change a verdict
                limit = torch.where(previous.to(share.device) == DEAD, 2 * limit, limit / 2)
            never = never | (share <= limit)
        dead = dead | never
    cos_start = moved = None
    untrained = torch.zeros_like(dead)
    untrained_below = 0.0
    learned = weight
    if initial is not None:
        cos_start = cosine_to(weight, initial).to(rms.device)
        moved = movement(cos_start)
        reference = moved[~dead].median() if bool((~dead).any()) else moved.max()
        floor = untrained_floor
        if floor is None:
            floor = FIRST_LAYER_FLOOR if weight.shape[1] == 3 else DEEP_LAYER_FLOOR
        untrained_below = max(untrained_fraction * float(reference), floor)
        untrained = _below(moved, untrained_below, previous, UNTRAINED, h) & ~dead
        learned = orthogonal_to(weight, initial).to(weight.device)
    power = power_spectra(weight, n_fft)
    learned_power = power if initial is None else power_spectra(learned, n_fft)
    aliasing = aliasing_scores(weight, stride, power=power)
    aliasing_learned = aliasing_scores(learned, stride, power=learned_power)
    entropy = spectral_entropy(power)
    entropy_noise = noise_entropy_floor(tuple(weight.shape[1:]), structure_z, n_fft)
    structured_learned = spectral_entropy(learned_power) < entropy_noise
    above = _above(aliasing_learned, alias_share, previous, ALIASED, h)
    aliased = above & structured_learned & ~dead & ~untrained
    duplicate_of, anti = duplicates(weight, duplicate_threshold, ignore=dead | untrained)
    return FilterReport(
        kernel=max(weight.shape[-2:]),
        stride=stride,
        step=step,
        rms=rms,
        cos_start=cos_start,
        movement=moved,
        untrained_below=untrained_below,
        aliasing=aliasing,
        aliasing_learned=aliasing_learned,
        aliasing_noise=noise_aliasing(stride, n_fft),
        bands=band_shares(weight, step, power=power),
        bands_noise=noise_band_shares(step, n_fft),
        peak=peak_frequency(power, step),
        entropy=entropy,
        entropy_noise=entropy_noise,
        dead=dead,
        untrained=untrained,
        aliased=aliased,
        duplicate_of=duplicate_of,
        anti_pairs=anti,
        effective_rank=effective_rank(weight),
        at_radius=rms >= radius * (1 - 1e-3),
        never_active=never,
    )


__all__ = [
    "ALIASED",
    "DEAD",
    "DUPLICATE",
    "OK",
    "STATUSES",
    "UNTRAINED",
    "FilterReport",
    "cosine_matrix",
    "cosine_to",
    "duplicates",
    "effective_rank",
    "filter_health",
    "filter_rms",
    "movement",
    "orthogonal_to",
    "positive_counts",
]
