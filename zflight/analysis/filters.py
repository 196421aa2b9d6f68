"""Filter health of a conv layer (Zeiler & Fergus, Fig. 6): dead, aliased and duplicate filters,
dominant spatial-frequency bands, effective rank, and the gridding of deconvnet projections.

The filter functions take a conv weight (C_out, C_in, k, k) (plus optional activation statistics)
and work in fp32/fp64 whatever its dtype, so scores are the same under bf16 training.
Frequencies are in cycles per pixel; the Nyquist square of stride s is |f|_inf <= 1/(2s).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

BANDS = ("low", "mid", "high")
LOW, MID, HIGH = 0, 1, 2
STATUSES = ("ok", "dead", "aliased", "duplicate")
OK, DEAD, ALIASED, DUPLICATE = 0, 1, 2, 3


def filter_rms(weight: torch.Tensor) -> torch.Tensor:
    """(C,) root mean square of each filter over its input channels and taps, in fp32."""
    return weight.detach().float().flatten(1).pow(2).mean(1).sqrt()


def frequency_grid(
    n_fft: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fy, fx), each (n, n): the frequency of every bin of an unshifted n-point 2-D FFT."""
    f = torch.fft.fftfreq(n_fft, device=device)
    return f[:, None].expand(n_fft, n_fft), f[None, :].expand(n_fft, n_fft)


def power_spectra(weight: torch.Tensor, n_fft: int = 64) -> torch.Tensor:
    """(C, n, n) power of each filter's zero-padded 2-D FFT, summed over input channels.

    Input channels go through the FFT in chunks of at most 2^23 complex values (64 MB), so a wide
    layer (conv2 of the full-width net: 256 x 96 filters) stays cheap in memory.
    """
    if weight.dim() != 4:
        raise ValueError(
            f"expected a conv weight (C_out, C_in, k, k), got shape {tuple(weight.shape)}"
        )
    if n_fft < max(weight.shape[-2:]):
        raise ValueError(f"n_fft={n_fft} is smaller than the kernel {tuple(weight.shape[-2:])}")
    w = weight.detach().float()
    chunk = max(1, (1 << 23) // (w.shape[0] * n_fft * n_fft))
    power = w.new_zeros(w.shape[0], n_fft, n_fft)
    for part in w.split(chunk, dim=1):
        power += torch.fft.fft2(part, s=(n_fft, n_fft)).abs().pow(2).sum(1)
    return power


def _share(power: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Share of each spectrum's energy inside a boolean (n, n) region; 0 for an all-zero filter."""
    total = power.flatten(1).sum(1)
    inside = (power * region).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-30), torch.zeros_like(total))


def aliasing_scores(
    weight: torch.Tensor, stride: int, n_fft: int = 64, power: torch.Tensor | None = None
) -> torch.Tensor:
    """(C,) share of each filter's spectral energy outside the Nyquist square |f|_inf > 1/(2s).

    White noise scores about 1 - 1/s^2 (exactly 1 - (bins inside / n)^2 in expectation), so a
    freshly initialised layer looks aliased; the score is invariant to scaling a filter.
    ``power`` (from ``power_spectra``) saves recomputing the spectra.
    """
    power = power_spectra(weight, n_fft) if power is None else power
    fy, fx = frequency_grid(power.shape[-1], power.device)
    return _share(power, torch.maximum(fy.abs(), fx.abs()) > 1.0 / (2 * stride))


def dominant_frequencies(
    weight: torch.Tensor, n_fft: int = 64, power: torch.Tensor | None = None
) -> torch.Tensor:
    """(C, 2) the (fy, fx) of each filter's spectral peak (DC included: colour blobs peak at 0)."""
    power = power_spectra(weight, n_fft) if power is None else power
    fy, fx = frequency_grid(power.shape[-1], power.device)
    idx = power.flatten(1).argmax(1)
    return torch.stack([fy.flatten()[idx], fx.flatten()[idx]], dim=1)


def frequency_bands(freqs: torch.Tensor, kernel: int, stride: int) -> torch.Tensor:
    """(C,) band of each (fy, fx): HIGH outside the Nyquist square (it aliases, per axis), LOW
    below 1/k radially (under one cycle across the filter), MID between: the alias-free band
    [1/k, 1/(2s)]."""
    radial = freqs.norm(dim=1)
    band = torch.full_like(radial, MID, dtype=torch.long)
    band[radial < 1.0 / kernel] = LOW
    band[freqs.abs().amax(1) > 1.0 / (2 * stride)] = HIGH
    return band


def mid_band_energy(
    weight: torch.Tensor, stride: int, n_fft: int = 64, power: torch.Tensor | None = None
) -> torch.Tensor:
    """(C,) share of each filter's energy in the alias-free band |f|_2 >= 1/k, |f|_inf <= 1/(2s)."""
    power = power_spectra(weight, n_fft) if power is None else power
    fy, fx = frequency_grid(power.shape[-1], power.device)
    k = max(weight.shape[-2:])
    region = (torch.sqrt(fy**2 + fx**2) >= 1.0 / k) & (
        torch.maximum(fy.abs(), fx.abs()) <= 1.0 / (2 * stride)
    )
    return _share(power, region)


def cosine_matrix(weight: torch.Tensor) -> torch.Tensor:
    """(C, C) cosine similarity of the flattened filters (0 for an all-zero filter)."""
    flat = F.normalize(weight.detach().double().flatten(1), dim=1, eps=1e-30)
    return (flat @ flat.T).float()


def duplicates(
    weight: torch.Tensor,
    threshold: float = 0.9,
    ignore: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[tuple[int, int, float]]]:
    """Near-copies by cosine similarity of flattened filters.

    Returns ``duplicate_of`` (C,) long: the lowest-index earlier filter with cosine > threshold,
    or -1; and the anti-pairs (i, j, cos) with cos < -threshold, i < j: sign-flipped copies are
    reported but not flagged (ReLU makes them two different features). ``ignore`` (C,) bool drops
    filters, e.g. dead ones, whose direction is noise.
    """
    cos = cosine_matrix(weight)
    c = cos.shape[0]
    if ignore is not None:
        keep = ~ignore.to(cos.device)
        cos = cos * (keep[:, None] & keep[None, :])
    earlier = torch.ones(c, c, dtype=torch.bool, device=cos.device).tril(-1)  # j < i
    similar = (cos > threshold) & earlier
    has = similar.any(1)
    first = similar.float().argmax(1)
    duplicate_of = torch.where(has, first, torch.full_like(first, -1))
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


def gridding_scores(images: torch.Tensor, stride: int) -> torch.Tensor:
    """(N,) share of each image's (mean-removed) energy in its period-``stride`` pattern.

    The period-s pattern is the s x s tile of per-phase means; its energy equals the spectral
    energy at the stride harmonics (k/s, l/s) != (0, 0). Applied to deconvnet projections through a
    conv1 of stride s, it measures the gridding the paper saw in layer 2. Images (N, [C,] H, W) are
    cropped to multiples of s; channels are summed; an all-constant image scores 0.
    """
    x = images.detach().double()
    if x.dim() == 3:
        x = x[:, None]
    h, w = (x.shape[-2] // stride) * stride, (x.shape[-1] // stride) * stride
    x = x[..., :h, :w]
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    tile = (
        x.unflatten(-1, (w // stride, stride))
        .unflatten(-3, (h // stride, stride))
        .mean(dim=(-4, -2))
    )
    periodic = tile.pow(2).sum(dim=(1, 2, 3)) * (h // stride) * (w // stride)
    total = x.pow(2).sum(dim=(1, 2, 3))
    return torch.where(
        total > 0, periodic / total.clamp_min(1e-300), torch.zeros_like(total)
    ).float()


@dataclass
class FilterReport:
    """Per-filter health of one conv layer; ``scalars()`` condenses it to layer fractions."""

    kernel: int
    stride: int
    rms: torch.Tensor
    aliasing: torch.Tensor
    dominant: torch.Tensor
    band: torch.Tensor
    mid_energy: torch.Tensor
    dead: torch.Tensor
    aliased: torch.Tensor
    duplicate_of: torch.Tensor
    anti_pairs: list[tuple[int, int, float]]
    effective_rank: float
    at_radius: torch.Tensor
    never_active: torch.Tensor | None = None
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def duplicate(self) -> torch.Tensor:
        return self.duplicate_of >= 0

    @property
    def status(self) -> torch.Tensor:
        """(C,) one status per filter for display: dead, else duplicate, else aliased, else ok."""
        s = torch.full_like(self.duplicate_of, OK)
        s[self.aliased] = ALIASED
        s[self.duplicate] = DUPLICATE
        s[self.dead] = DEAD
        return s

    def scalars(self) -> dict[str, float]:
        """Fractions dead / aliased / duplicate / at the radius (of all filters), mid-band share and
        energy and mean aliasing (of live filters), effective rank, never-active share if known."""
        live = ~self.dead
        n_live = max(int(live.sum()), 1)
        out = {
            "dead": float(self.dead.float().mean()),
            "aliased": float(self.aliased.float().mean()),
            "duplicate": float(self.duplicate.float().mean()),
            "anti_pairs": float(len(self.anti_pairs)),
            "mid_band": float((live & (self.band == MID)).sum()) / n_live,
            "mid_band_energy": float(self.mid_energy[live].sum()) / n_live,
            "aliasing_mean": float(self.aliasing[live].sum()) / n_live,
            "effective_rank": self.effective_rank,
            "at_radius": float(self.at_radius.float().mean()),
        }
        if self.never_active is not None:
            out["never_active"] = float(self.never_active.float().mean())
        out.update(self.extra)
        return out


def filter_health(
    weight: torch.Tensor,
    stride: int,
    *,
    positive: torch.Tensor | None = None,
    dead_fraction: float = 0.1,
    alias_threshold: float = 0.5,
    duplicate_threshold: float = 0.9,
    radius: float = 0.1,
    n_fft: int = 64,
) -> FilterReport:
    """Diagnose every filter of a conv layer with weight (C, C_in, k, k) applied at ``stride``.

    Dead: RMS below ``dead_fraction`` of the layer's median RMS, or (given ``positive``, the summed
    ``positive_counts`` of the layer's output on validation data) never positive. Aliased: score
    above ``alias_threshold``; duplicate: cosine above ``duplicate_threshold`` with an earlier
    filter; dead filters are neither. At radius: RMS within 0.1% of ``radius`` or above.
    """
    rms = filter_rms(weight)
    dead = rms < dead_fraction * rms.median()
    never = None
    if positive is not None:
        never = positive.to(rms.device) == 0
        dead = dead | never
    power = power_spectra(weight, n_fft)
    aliasing = aliasing_scores(weight, stride, power=power)
    dominant = dominant_frequencies(weight, power=power)
    kernel = max(weight.shape[-2:])
    duplicate_of, anti = duplicates(weight, duplicate_threshold, ignore=dead)
    return FilterReport(
        kernel=kernel,
        stride=stride,
        rms=rms,
        aliasing=aliasing,
        dominant=dominant,
        band=frequency_bands(dominant, kernel, stride),
        mid_energy=mid_band_energy(weight, stride, power=power),
        dead=dead,
        aliased=(aliasing > alias_threshold) & ~dead,
        duplicate_of=duplicate_of,
        anti_pairs=anti,
        effective_rank=effective_rank(weight),
        at_radius=rms >= radius * (1 - 1e-3),
        never_active=never,
    )
