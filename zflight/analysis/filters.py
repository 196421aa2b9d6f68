"""Filter health of a conv layer (Zeiler & Fergus, Fig. 6): what training did to each filter.

Pure functions of a conv weight (C_out, C_in, k, k), plus optional activation statistics and the
filters' initial weights, computed in fp32/fp64 whatever the weight's dtype. Per filter: RMS,
movement (cosine to its start), band shares and aliasing on the absolute axis of
``zflight.analysis.spectrum``, duplicates by cosine. Statuses, in precedence:

- dead: collapsed (RMS below a fraction of the layer's 90th-percentile RMS, so a layer where most
  filters collapsed still has a reference) or never positive on the data;
- untrained: still near its start (cosine to its initial weights above ``untrained_cosine``);
- aliased: trained, and its energy above Nyquist well over white noise at that stride
  (``alias_excess`` of the way from the white-noise share to 1);
- duplicate: cosine above a threshold with an earlier filter;
- ok.

Calibration of ``untrained_cosine = 0.5``: a filter w = start + learned with cos(w, start) = c
keeps c^2 of its energy in the start direction. At c = 0.5 the learned part holds 75%, enough for
the spectral verdicts to read the learned structure: a grating at 0.45 cycles/px mixed with its
random start at that cosine keeps an alias excess of 0.70 (7x7, stride 2) and 0.78 (11x11,
stride 4), over the 0.5 threshold, and a smooth Gabor below Nyquist stays far below 0
(tests/test_filters.py builds these mixtures on both sides of the threshold).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zflight.analysis.spectrum import (
    BANDS,
    alias_excess,
    aliasing_scores,
    band_shares,
    noise_aliasing,
    noise_band_shares,
    power_spectra,
)

STATUSES = ("ok", "dead", "untrained", "aliased", "duplicate")
OK, DEAD, UNTRAINED, ALIASED, DUPLICATE = range(len(STATUSES))


def filter_rms(weight: torch.Tensor) -> torch.Tensor:
    """(C,) root mean square of each filter over its input channels and taps, in fp32."""
    return weight.detach().float().flatten(1).pow(2).mean(1).sqrt()


def cosine_to(weight: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """(C,) cosine between each filter and its initial weights (0 where either is all-zero)."""
    a = F.normalize(weight.detach().double().flatten(1), dim=1, eps=1e-30)
    b = F.normalize(initial.detach().to(a.device).double().flatten(1), dim=1, eps=1e-30)
    return (a * b).sum(1).float()


def cosine_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(C, C) cosine similarity of the flattened filters (0 for an all-zero filter)."""
    flat = F.normalize(weight.detach().double().flatten(1), dim=1, eps=1e-30)
    return (flat @ flat.T).float()


def duplicates(
    weight: torch.Tensor, threshold: float = 0.9, ignore: torch.Tensor | None = None
) -> tuple[torch.Tensor, list[tuple[int, int, float]]]:
    """Near-copies by cosine similarity of flattened filters.

    Returns ``duplicate_of`` (C,) long: the lowest-index earlier filter with cosine > threshold,
    or -1; and the anti-pairs (i, j, cos) with cos < -threshold, i < j: sign-flipped copies are
    reported but not flagged (ReLU makes them two different features). ``ignore`` (C,) bool drops
    filters whose direction is noise (dead or untrained ones).
    """
    cos = cosine_matrix(weight)
    c = cos.shape[0]
    if ignore is not None:
        keep = ~ignore.to(cos.device)
        cos = cos * (keep[:, None] & keep[None, :])
    earlier = torch.ones(c, c, dtype=torch.bool, device=cos.device).tril(-1)  # j < i
    similar = (cos > threshold) & earlier
    first = similar.float().argmax(1)
    duplicate_of = torch.where(similar.any(1), first, torch.full_like(first, -1))
    ii, jj = torch.nonzero((cos < -threshold) & earlier.T, as_tuple=True)
    anti = [(int(i), int(j), float(cos[i, j])) for i, j in zip(ii.tolist(), jj.tolist())]
    return duplicate_of, anti


def effective_rank(weight: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank of the (C, C_in*k*k) filter matrix: exp of the entropy of
    its normalised singular values. A random 96x147 bank gives about 86, 48 duplicated pairs 46."""
    s = torch.linalg.svdvals(weight.detach().double().flatten(1))
    if s.sum() <= 0:
        return 0.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def positive_counts(output: torch.Tensor) -> torch.Tensor:
    """(C,) how many entries of each channel of a (N, C, ...) activation are positive (int64).

    Summed over validation batches (and ranks), a zero marks a channel never active on the data.
    """
    dims = [d for d in range(output.dim()) if d != 1]
    return (output.detach() > 0).sum(dim=dims, dtype=torch.long)


@dataclass
class FilterReport:
    """Per-filter health of one conv layer; ``scalars()`` condenses it to layer-level numbers."""

    kernel: int
    stride: int
    step: float
    rms: torch.Tensor
    cos_start: torch.Tensor | None
    aliasing: torch.Tensor
    aliasing_noise: float
    bands: torch.Tensor
    bands_noise: torch.Tensor
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
    def excess(self) -> torch.Tensor:
        """(C,) aliasing relative to white noise at this stride (see ``alias_excess``)."""
        return alias_excess(self.aliasing, self.aliasing_noise)

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
        """Status fractions (of all filters, by precedence), median cosine to the start, mean band
        shares and aliasing share of the live filters, each over white noise's (``band_mid_rel``,
        ``aliasing_rel``: 1 = as much as noise), effective rank, share at the RMS radius,
        never-active share when known."""
        n = len(self.rms)
        counts = self.counts()
        live = ~self.dead
        n_live = max(int(live.sum()), 1)
        mean_alias = float(self.aliasing[live].sum()) / n_live
        mid_noise = float(self.bands_noise[1])
        out = {name: counts[name] / n for name in STATUSES if name != "ok"}
        out.update(
            {
                "anti_pairs": float(len(self.anti_pairs)),
                **{
                    f"band_{b}": float(self.bands[live, i].sum()) / n_live
                    for i, b in enumerate(BANDS)
                },
                "band_mid_rel": _ratio(float(self.bands[live, 1].sum()) / n_live, mid_noise),
                "aliasing_mean": mean_alias,
                "aliasing_rel": _ratio(mean_alias, self.aliasing_noise),
                "effective_rank": self.effective_rank,
                "at_radius": float(self.at_radius.float().mean()),
            }
        )
        if self.cos_start is None:
            del out["untrained"]
        else:
            out["cos_start"] = float(self.cos_start.median())
        if self.never_active is not None:
            out["never_active"] = float(self.never_active.float().mean())
        return out


def _ratio(value: float, reference: float) -> float:
    """value / reference, 0 where the reference is 0 (nothing to compare with)."""
    return value / reference if reference > 0 else 0.0


def filter_health(
    weight: torch.Tensor,
    stride: int,
    *,
    step: float = 1.0,
    initial: torch.Tensor | None = None,
    positive: torch.Tensor | None = None,
    dead_fraction: float = 0.1,
    untrained_cosine: float = 0.5,
    alias_excess_threshold: float = 0.5,
    duplicate_threshold: float = 0.9,
    radius: float = 0.1,
    n_fft: int = 64,
) -> FilterReport:
    """Diagnose every filter of a conv layer with weight (C, C_in, k, k) applied at ``stride``.

    ``step``: input pixels between the layer's taps (1 for conv1), for the absolute frequency axis.
    ``initial``: the filters at the start of training; without it no filter is called untrained.
    ``positive``: summed ``positive_counts`` of the layer's output on validation data.
    Dead: RMS below ``dead_fraction`` of the layer's 90th-percentile RMS, or never positive. Untrained: cosine to the
    start above ``untrained_cosine``. Aliased: not dead nor untrained, and ``alias_excess`` above
    ``alias_excess_threshold``. Duplicate: cosine above ``duplicate_threshold`` with an earlier
    filter, among filters neither dead nor untrained. At radius: RMS within 0.1% of ``radius``.
    """
    rms = filter_rms(weight)
    dead = rms < dead_fraction * torch.quantile(rms, 0.9)
    never = None
    if positive is not None:
        never = positive.to(rms.device) == 0
        dead = dead | never
    cos_start = None if initial is None else cosine_to(weight, initial).to(rms.device)
    untrained = (
        torch.zeros_like(dead) if cos_start is None else (cos_start > untrained_cosine) & ~dead
    )
    power = power_spectra(weight, n_fft)
    aliasing = aliasing_scores(weight, stride, power=power)
    noise = noise_aliasing(stride, n_fft)
    aliased = (alias_excess(aliasing, noise) > alias_excess_threshold) & ~dead & ~untrained
    duplicate_of, anti = duplicates(weight, duplicate_threshold, ignore=dead | untrained)
    return FilterReport(
        kernel=max(weight.shape[-2:]),
        stride=stride,
        step=step,
        rms=rms,
        cos_start=cos_start,
        aliasing=aliasing,
        aliasing_noise=noise,
        bands=band_shares(weight, step, power=power),
        bands_noise=noise_band_shares(step, n_fft),
        dead=dead,
        untrained=untrained,
        aliased=aliased,
        duplicate_of=duplicate_of,
        anti_pairs=anti,
        effective_rank=effective_rank(weight),
        at_radius=rms >= radius * (1 - 1e-3),
        never_active=never,
    )
