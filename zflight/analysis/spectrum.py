"""Spatial frequency of conv filters and projections on ONE absolute axis: cycles per input pixel.

A layer's taps are ``step`` input pixels apart (1 for conv1; the cumulative stride below it for a
deeper layer), so its tap-grid frequency f is f / step cycles per input pixel. Band shares use
fixed radial bands on that axis, the same for every layer and architecture; aliasing is the share
of energy above the layer's own Nyquist frequency 1/(2 * stride) (per axis, in tap units), and is
compared with white noise at the same stride, which a random start scores without learning
anything. Structure needs no start: a filter's spectral entropy against the distribution of white
noise filters of the same shape (a random filter spreads its energy over every frequency, a learned
edge or blob concentrates it). Peak frequency: where each filter's energy is largest. Gridding is a peak-to-neighbour ratio at the harmonics of a period, for deconvnet
projections cropped to their receptive field.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

BANDS = ("low", "mid", "high")
BAND_EDGES = (1 / 16, 1 / 4)  # cycles per input pixel: periods above 16 px, 4-16 px, below 4 px


def power_spectra(weight: torch.Tensor, n_fft: int = 64) -> torch.Tensor:
    """(C, n, n) power of each filter's zero-padded 2-D FFT, summed over input channels, in fp32.

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


def frequency_grid(
    n_fft: int, step: float = 1.0, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(fy, fx), each (n, n): cycles per input pixel of every bin of an unshifted n-point 2-D FFT
    of a filter whose taps are ``step`` input pixels apart."""
    f = torch.fft.fftfreq(n_fft, device=device) / step
    return f[:, None].expand(n_fft, n_fft), f[None, :].expand(n_fft, n_fft)


def band_index(fy: torch.Tensor, fx: torch.Tensor) -> torch.Tensor:
    """Band (0 low, 1 mid, 2 high) of each radial frequency; edges belong to the band above."""
    radial = torch.sqrt(fy**2 + fx**2)
    return (radial >= BAND_EDGES[0]).long() + (radial >= BAND_EDGES[1]).long()


def _shares(power: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """(C, R) share of each spectrum's energy in each of R boolean (n, n) regions (0 if all-zero)."""
    total = power.flatten(1).sum(1, keepdim=True)
    inside = power.flatten(1) @ regions.flatten(1).T.to(power.dtype)
    return torch.where(total > 0, inside / total.clamp_min(1e-30), torch.zeros_like(inside))


def band_shares(
    weight: torch.Tensor, step: float = 1.0, n_fft: int = 64, power: torch.Tensor | None = None
) -> torch.Tensor:
    """(C, 3) share of each filter's energy in the low / mid / high bands (cycles per input pixel)."""
    power = power_spectra(weight, n_fft) if power is None else power
    band = band_index(*frequency_grid(power.shape[-1], step, power.device))
    return _shares(power, torch.stack([band == b for b in range(len(BANDS))]))


def nyquist_region(n_fft: int, stride: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """(n, n) bool: bins above the Nyquist frequency of ``stride`` on either axis, in tap units."""
    fy, fx = frequency_grid(n_fft, 1.0, device)
    return torch.maximum(fy.abs(), fx.abs()) > 1.0 / (2 * stride)


def aliasing_scores(
    weight: torch.Tensor, stride: int, n_fft: int = 64, power: torch.Tensor | None = None
) -> torch.Tensor:
    """(C,) share of each filter's energy above the layer's Nyquist frequency 1/(2 * stride).

    Scale-invariant; white noise scores ``noise_aliasing(stride)`` (1 - 1/s^2 for large n).
    """
    power = power_spectra(weight, n_fft) if power is None else power
    return _shares(power, nyquist_region(power.shape[-1], stride, power.device)[None])[:, 0]


def noise_aliasing(stride: int, n_fft: int = 64) -> float:
    """Expected aliasing score of a white-noise filter: the share of FFT bins above Nyquist."""
    return float(nyquist_region(n_fft, stride).float().mean())


def noise_band_shares(step: float = 1.0, n_fft: int = 64) -> torch.Tensor:
    """(3,) expected band shares of a white-noise filter (flat spectrum: shares of bins)."""
    band = band_index(*frequency_grid(n_fft, step))
    return torch.stack([(band == b).float().mean() for b in range(len(BANDS))])


def spectral_entropy(power: torch.Tensor) -> torch.Tensor:
    """(C,) entropy of each (n, n) power spectrum taken as a distribution over its bins, divided by
    log(n^2): 1 for a flat spectrum (a single tap), 0 for all energy in one bin; 0 if all-zero."""
    p = power.double().flatten(1)
    p = p / p.sum(1, keepdim=True).clamp_min(1e-300)
    h = -(p * p.clamp_min(1e-300).log()).sum(1)
    return (h / math.log(p.shape[1])).float()


@lru_cache(maxsize=32)
def noise_entropies(shape: tuple[int, ...], n_fft: int = 64, samples: int = 500) -> torch.Tensor:
    """(samples,) sorted spectral entropies of white-noise filters of ``shape`` (C_in, kh, kw):
    the reference a filter without structure is drawn from (seeded, the same on every call)."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(samples, *shape, generator=g)
    return spectral_entropy(power_spectra(noise, n_fft)).sort().values


def noise_entropy_floor(shape: tuple[int, ...], z: float = 6.0, n_fft: int = 64) -> float:
    """``z`` standard deviations below the mean of ``noise_entropies``: below it, a filter is
    structured (at z = 6 none of 10,000 white-noise filters of 3x7x7 or 3x11x11 fell there)."""
    e = noise_entropies(tuple(shape), n_fft).double()
    return float(e.mean() - z * e.std())


def peak_frequency(power: torch.Tensor, step: float = 1.0) -> torch.Tensor:
    """(C,) radial frequency, in cycles per input pixel, of each spectrum's largest bin (0 = DC:
    a blob of one colour; a Gabor peaks at its carrier frequency)."""
    fy, fx = frequency_grid(power.shape[-1], step, power.device)
    radial = torch.sqrt(fy**2 + fx**2).flatten()
    return radial[power.flatten(1).argmax(1)]
