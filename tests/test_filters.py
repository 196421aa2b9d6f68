"""Filter-health analysis on constructed filter banks with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zflight.analysis.filters import (
    ALIASED,
    DEAD,
    DUPLICATE,
    HIGH,
    LOW,
    MID,
    OK,
    aliasing_scores,
    cosine_matrix,
    dominant_frequencies,
    duplicates,
    effective_rank,
    filter_health,
    filter_rms,
    frequency_bands,
    gridding_scores,
    mid_band_energy,
    positive_counts,
)


def gabor(k: int, freq: float, sigma: float, theta: float = 0.0) -> torch.Tensor:
    """A k x k cosine Gabor centred on the grid, carrier along angle theta."""
    c = torch.arange(k, dtype=torch.float64) - (k - 1) / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    u = xx * math.cos(theta) + yy * math.sin(theta)
    return torch.exp(-(xx**2 + yy**2) / (2 * sigma**2)) * torch.cos(2 * math.pi * freq * u)


def dct_basis(k: int, order: int) -> torch.Tensor:
    """The 1-D DCT-II basis vector of a given order on k points (frequency order / (2k))."""
    n = torch.arange(k, dtype=torch.float64)
    return torch.cos(math.pi * order * (2 * n + 1) / (2 * k))


def low_frequency_bank() -> torch.Tensor:
    """Six 3x7x7 filters: separable DCT orders <= 1, one colour channel each: orthogonal, smooth."""
    bank = torch.zeros(6, 3, 7, 7, dtype=torch.float64)
    layout = [(0, 0, 0), (1, 0, 1), (2, 1, 0), (0, 1, 1), (1, 1, 0), (2, 0, 1)]  # channel, orders
    for i, (c, oy, ox) in enumerate(layout):
        bank[i, c] = torch.outer(dct_basis(7, oy), dct_basis(7, ox))
    return (bank / bank.flatten(1).norm(dim=1).view(-1, 1, 1, 1)).float()


def inside_share_1d(v: torch.Tensor, stride: int, n: int = 64) -> float:
    """Share of a 1-D filter's zero-padded DFT energy at |f| <= 1/(2s), by an explicit DFT sum."""
    f = torch.fft.fftfreq(n, dtype=torch.float64)
    t = torch.arange(len(v), dtype=torch.float64)
    basis = torch.exp(-2j * math.pi * f[:, None] * t[None, :])
    power = (basis @ v.to(torch.complex128)).abs() ** 2
    return float(power[f.abs() <= 1 / (2 * stride)].sum() / power.sum())


def test_orthogonal_low_frequency_filters_are_ok():
    bank = low_frequency_bank()
    assert torch.allclose(cosine_matrix(bank), torch.eye(6), atol=1e-6)
    report = filter_health(bank, stride=2)
    assert report.status.tolist() == [OK] * 6
    assert report.aliasing.max() < 0.25  # a 7-tap box leaks sidelobes, well under 0.5
    assert report.band.tolist() == [LOW] * 6  # orders <= 1 sit below 1/k = 0.143 cycles/pixel
    # orthonormal rows: equal singular values, so the effective rank is the count
    assert report.effective_rank == pytest.approx(6.0, abs=1e-6)
    s = report.scalars()
    assert (s["dead"], s["aliased"], s["duplicate"], s["anti_pairs"]) == (0.0, 0.0, 0.0, 0.0)


def test_separable_aliasing_matches_one_dimensional_dfts():
    g = torch.Generator().manual_seed(1)
    for stride in (2, 4):
        a, b = torch.randn(2, 7, generator=g, dtype=torch.float64)
        weight = torch.outer(a, b)[None, None].float()
        expected = 1 - inside_share_1d(a, stride) * inside_share_1d(b, stride)
        assert float(aliasing_scores(weight, stride)) == pytest.approx(expected, abs=1e-5)


def test_multichannel_score_is_energy_weighted_mean_of_channels():
    w = torch.randn(1, 3, 7, 7, generator=torch.Generator().manual_seed(2))
    w[0, 1] *= 3.0
    per_channel = torch.cat([aliasing_scores(w[:, c : c + 1], 2) for c in range(3)])
    energy = w[0].pow(2).sum((1, 2))
    assert float(aliasing_scores(w, 2)) == pytest.approx(
        float((per_channel * energy).sum() / energy.sum()), abs=1e-5
    )


def test_high_frequency_filters_are_aliased():
    checker = torch.tensor([[(-1.0) ** (i + j) for j in range(7)] for i in range(7)])[None, None]
    assert float(aliasing_scores(checker, 2)) > 0.99
    # stride 1: no frequency lies outside |f| <= 1/2
    assert float(aliasing_scores(checker, 1)) == 0.0
    bank = torch.stack([gabor(7, 0.40, 1.4), gabor(7, 0.40, 1.4, math.pi / 2), gabor(7, 0.10, 1.4)])
    report = filter_health(bank[:, None].float(), stride=2)
    assert report.aliased.tolist() == [True, True, False]
    assert report.band.tolist() == [HIGH, HIGH, LOW]
    assert report.status.tolist() == [ALIASED, ALIASED, OK]


def test_gabor_aliasing_table_of_the_reference():
    # A 7x7 cosine Gabor at stride 2, isotropic Gaussian envelope sigma = k/5 = 1.4, 64-point FFT.
    table = {0.15: 0.08, 0.20: 0.23, 0.25: 0.46, 0.30: 0.71, 0.40: 0.97}
    bank = torch.stack([gabor(7, f, 1.4) for f in table])[:, None].float()
    scores = aliasing_scores(bank, 2, n_fft=64)
    for score, expected in zip(scores.tolist(), table.values()):
        assert score == pytest.approx(expected, abs=0.005)
    assert torch.all(scores[1:] > scores[:-1])  # monotone in frequency, whatever the envelope


def test_white_noise_scores_the_share_of_bins_outside():
    # E|W(f)|^2 is flat for white noise, so the expected score is the share of bins outside the
    # square: 1 - (33/64)^2 = 0.734 at stride 2 and 1 - (17/64)^2 = 0.929 at stride 4 (~ 1 - 1/s^2).
    g = torch.Generator().manual_seed(3)
    for k, stride, inside_bins in ((7, 2, 33), (11, 4, 17)):
        scores = aliasing_scores(torch.randn(1000, 3, k, k, generator=g), stride)
        assert float(scores.mean()) == pytest.approx(1 - (inside_bins / 64) ** 2, abs=0.005)


def test_near_zero_filters_are_dead_and_nothing_else():
    w = torch.randn(16, 3, 7, 7, generator=torch.Generator().manual_seed(4))
    w[[3, 11]] *= 1e-3
    report = filter_health(w, stride=2)
    assert torch.nonzero(report.dead).flatten().tolist() == [3, 11]
    assert not report.aliased[[3, 11]].any() and not report.duplicate[[3, 11]].any()
    assert report.status[[3, 11]].tolist() == [DEAD, DEAD]
    assert report.scalars()["dead"] == pytest.approx(2 / 16)


def test_near_copies_are_duplicates_and_sign_flips_are_anti_pairs():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(10, 3, 7, 7, generator=g)
    w[6] = 2.5 * w[2] + 0.05 * torch.randn(3, 7, 7, generator=g)
    w[8] = -w[4]
    duplicate_of, anti = duplicates(w, 0.9)
    assert duplicate_of.tolist() == [-1] * 6 + [2] + [-1] * 3
    assert [(i, j) for i, j, _ in anti] == [(4, 8)]
    assert anti[0][2] == pytest.approx(-1.0, abs=1e-6)
    report = filter_health(w, stride=2)
    assert report.status[6] == DUPLICATE and report.status[8] != DUPLICATE
    assert report.scalars()["duplicate"] == pytest.approx(0.1)
    assert report.scalars()["anti_pairs"] == 1.0


def test_random_initialisation_flags_no_duplicates_and_no_dead_filters():
    torch.manual_seed(6)
    for conv in (nn.Conv2d(3, 96, 7, 2), nn.Conv2d(3, 96, 11, 4)):
        nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
        report = filter_health(conv.weight, stride=conv.stride[0])
        assert not report.dead.any() and not report.duplicate.any() and report.anti_pairs == []
        # about 0.31 expected between 96 random filters
        assert cosine_matrix(conv.weight).fill_diagonal_(0).abs().max() < 0.45


def test_effective_rank_of_random_and_duplicated_banks():
    g = torch.Generator().manual_seed(7)
    assert effective_rank(torch.randn(96, 3, 7, 7, generator=g)) == pytest.approx(86.0, abs=1.0)
    half = torch.randn(48, 3, 7, 7, generator=g)
    assert effective_rank(torch.cat([half, half])) == pytest.approx(45.8, abs=1.0)
    assert effective_rank(torch.eye(5).view(5, 5, 1, 1)) == pytest.approx(5.0, abs=1e-9)
    assert effective_rank(torch.zeros(4, 3, 7, 7)) == 0.0


def test_scores_are_invariant_to_scaling_filters():
    w = torch.randn(12, 3, 7, 7, generator=torch.Generator().manual_seed(8))
    w[5] = 1.3 * w[1]
    scale = torch.tensor([0.5, 3.0, 1.0, 7.0, 0.2, 1.5, 2.0, 0.8, 1.0, 4.0, 0.3, 1.1])
    scale = scale.view(-1, 1, 1, 1)
    a, b = filter_health(w, 2), filter_health(w * scale, 2)
    assert torch.allclose(a.aliasing, b.aliasing, atol=1e-5)
    assert torch.equal(a.dominant, b.dominant) and torch.equal(a.band, b.band)
    assert torch.equal(a.duplicate_of, b.duplicate_of) and torch.equal(a.status, b.status)
    assert torch.allclose(a.mid_energy, b.mid_energy, atol=1e-5)
    assert torch.allclose(filter_rms(w * scale), filter_rms(w) * scale.flatten(), rtol=1e-5)


def test_dominant_frequency_and_bands():
    x = torch.arange(8, dtype=torch.float32)
    grating = torch.cos(math.pi / 2 * x).expand(8, 8)[None, None]  # 0.25 cycles/pixel along x
    assert dominant_frequencies(grating).tolist() == [[0.0, 0.25]]
    assert dominant_frequencies(torch.ones(1, 3, 7, 7)).tolist() == [[0.0, 0.0]]
    freqs = torch.tensor([[0.0, 0.0], [0.0, 0.2], [0.0, 0.3], [0.2, 0.2], [0.0, 0.1], [0.0, 0.15]])
    assert frequency_bands(freqs, 7, 2).tolist() == [LOW, MID, HIGH, MID, LOW, MID]
    assert frequency_bands(freqs, 11, 4).tolist() == [LOW, HIGH, HIGH, HIGH, MID, HIGH]


def test_mid_band_energy_of_constructed_filters():
    blob = gabor(7, 0.0, 2.5)[None, None].float()  # a smooth blob: energy near DC, below 1/k
    assert float(mid_band_energy(blob, 2)) < 0.05
    mid = gabor(15, 0.2, 3.0)[None, None].float()  # narrow band around 0.2 in [1/15, 1/4]
    assert float(mid_band_energy(mid, 2)) > 0.8
    assert float(mid_band_energy(mid, 2)) + float(aliasing_scores(mid, 2)) <= 1.0 + 1e-6


def test_forced_off_channel_is_the_only_one_dead_by_activation_statistics():
    torch.manual_seed(9)
    conv = nn.Conv2d(3, 8, 7, 2)
    with torch.no_grad():
        conv.bias[5] = -1e3
    counts = sum(positive_counts(conv(torch.randn(4, 3, 32, 32))) for _ in range(3))
    assert counts.dtype == torch.long and counts[5] == 0
    assert bool((counts[torch.arange(8) != 5] > 0).all())
    report = filter_health(conv.weight, 2, positive=counts)
    assert torch.nonzero(report.dead).flatten().tolist() == [5]
    assert report.scalars()["never_active"] == pytest.approx(1 / 8)
    assert filter_health(conv.weight, 2).dead.sum() == 0  # its weights alone look healthy


def test_positive_counts_exact():
    out = torch.tensor([[[[1.0, -1.0], [0.0, 2.0]], [[-3.0, -1.0], [0.0, 0.0]]]])
    assert positive_counts(out).tolist() == [2, 0]
    assert positive_counts(out.flatten(2).squeeze(-1)[:, :, 0]).tolist() == [1, 0]


def test_at_radius_share():
    w = torch.randn(4, 3, 7, 7, generator=torch.Generator().manual_seed(10))
    w = w / filter_rms(w).view(-1, 1, 1, 1) * torch.tensor([0.1, 0.05, 0.1, 0.2]).view(-1, 1, 1, 1)
    report = filter_health(w, 2, radius=0.1)
    assert report.at_radius.tolist() == [True, False, True, True]


def test_gridding_score_of_constructed_images():
    comb = torch.zeros(2, 3, 16, 16)
    comb[:, :, ::2, ::2] = 1.0
    assert gridding_scores(comb, 2).tolist() == pytest.approx([1.0, 1.0])
    c = torch.arange(32, dtype=torch.float32) - 15.5
    blob = torch.exp(-(c[:, None] ** 2 + c[None, :] ** 2) / (2 * 4.0**2))[None]
    assert float(gridding_scores(blob, 2)) < 1e-4
    assert float(gridding_scores(torch.ones(1, 8, 8), 2)) == 0.0
    checker = torch.tensor([[(-1.0) ** (i + j) for j in range(32)] for i in range(32)])
    mixed = blob + 0.1 * checker  # energies add: the checker is orthogonal to the blob's spectrum
    e_check, e_blob = (0.1 * checker).pow(2).sum(), (blob - blob.mean()).pow(2).sum()
    assert float(gridding_scores(mixed, 2)) == pytest.approx(
        float(e_check / (e_check + e_blob)), rel=1e-3
    )


def test_gridding_equals_energy_at_stride_harmonics():
    x = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(11)).cumsum(-1)
    for stride in (2, 4):
        power = torch.fft.fft2((x - x.mean((-2, -1), keepdim=True)).double()).abs().pow(2)
        harmonics = torch.zeros(24, 24, dtype=torch.bool)
        harmonics[:: 24 // stride, :: 24 // stride] = True
        harmonics[0, 0] = False
        expected = (power * harmonics).sum((1, 2, 3)) / power.sum((1, 2, 3))
        assert torch.allclose(gridding_scores(x, stride).double(), expected, atol=1e-6)


def test_transposed_strided_conv_grids_with_a_high_frequency_filter():
    # The layer-2 artefact: copies of a conv1 filter placed on a stride-2 grid.
    g = torch.Generator().manual_seed(12)
    sparse = torch.rand(4, 1, 15, 15, generator=g)
    smooth = gabor(7, 0.0, 1.5)[None, None].float()
    sharp = (
        torch.tensor([[(-1.0) ** (i + j) for j in range(7)] for i in range(7)])[None, None] + 0.5
    )
    up = {
        name: nn.functional.conv_transpose2d(sparse, w, stride=2)
        for name, w in (("smooth", smooth), ("sharp", sharp))
    }
    assert float(gridding_scores(up["sharp"], 2).mean()) > 0.5
    assert float(gridding_scores(up["smooth"], 2).mean()) < 0.01
