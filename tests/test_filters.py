"""Filter-health analysis on constructed filter banks and images with known answers."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from zflight.analysis.filters import (
    ALIASED,
    DEAD,
    DUPLICATE,
    OK,
    UNTRAINED,
    cosine_matrix,
    cosine_to,
    duplicates,
    effective_rank,
    filter_health,
    filter_rms,
    positive_counts,
)
from zflight.analysis.gridding import crop_windows, gridding_ratio
from zflight.analysis.spectrum import (
    aliasing_scores,
    band_shares,
    noise_aliasing,
    noise_band_shares,
    noise_entropy_floor,
    peak_frequency,
    power_spectra,
    spectral_entropy,
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
    # above Nyquist at stride 2 (|f|_inf > 1/4) lies inside the high band (|f|_2 >= 1/4)
    assert bool((report.bands[:, 2] >= report.aliasing - 1e-6).all())
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
    assert report.bands.argmax(1).tolist() == [2, 2, 1]  # high, high, mid (0.1 cycles/pixel)
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
    scale = torch.tensor([0.5, 3.0, 1.0, 4.0, 0.6, 1.5, 2.0, 0.8, 1.0, 3.5, 0.7, 1.1])
    scale = scale.view(-1, 1, 1, 1)
    a, b = filter_health(w, 2), filter_health(w * scale, 2)
    assert torch.allclose(a.aliasing, b.aliasing, atol=1e-5)
    assert torch.allclose(a.bands, b.bands, atol=1e-5)
    assert torch.equal(a.duplicate_of, b.duplicate_of) and torch.equal(a.status, b.status)
    assert torch.allclose(filter_rms(w * scale), filter_rms(w) * scale.flatten(), rtol=1e-5)


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


# ---- statuses against the start: constructed filters with known answers --------------------------
def planted(start: torch.Tensor, learned: torch.Tensor, cos: float) -> torch.Tensor:
    """start + learned mixed so that the result's cosine to ``start`` is exactly ``cos`` (at the
    start's norm, as when training moves a filter without growing it)."""
    s = start / start.norm()
    ell = learned - (learned * s).sum() * s  # the part of ``learned`` orthogonal to the start
    return (cos * s + math.sqrt(1 - cos**2) * ell / ell.norm()) * start.norm()


def rgb(filter2d: torch.Tensor) -> torch.Tensor:
    return filter2d.float().expand(3, -1, -1).clone()


@pytest.mark.parametrize(("k", "stride"), [(7, 2), (11, 4)])
def test_each_status_of_constructed_filters_against_their_start(k, stride):
    g = torch.Generator().manual_seed(20)
    initial = torch.randn(6, 3, k, k, generator=g)
    smooth = rgb(gabor(k, 0.08, k / 4))  # a trained edge detector, well below 1/(2 * stride)
    fine = rgb(gabor(k, 0.45, k / 3, 0.4))  # a trained grating above Nyquist for both strides
    w = initial.clone()  # 0: random, never moved -> untrained
    w[1] = planted(initial[1], smooth, 0.1)  # -> ok
    w[2] = planted(initial[2], fine, 0.1)  # -> aliased
    w[3] = 0.0  # -> dead
    w[4] = 3.0 * initial[4]  # only rescaled (e.g. by the RMS rule): still its start
    w[5] = planted(initial[5], smooth, 0.1)  # a second copy of filter 1's structure
    report = filter_health(w, stride, initial=initial)
    assert report.status.tolist() == [UNTRAINED, OK, ALIASED, DEAD, UNTRAINED, DUPLICATE]
    assert report.cos_start[[0, 4]].tolist() == pytest.approx([1.0, 1.0], abs=1e-6)
    assert report.cos_start[[1, 2]].tolist() == pytest.approx([0.1, 0.1], abs=1e-6)
    s = report.scalars()
    assert (s["dead"], s["untrained"], s["aliased"], s["duplicate"]) == pytest.approx(
        (1 / 6, 2 / 6, 1 / 6, 1 / 6)
    )
    # without the start nothing is untrained, and the random filters read as plain noise (not
    # aliased): they have no structure
    blind = filter_health(w, stride)
    assert blind.status.tolist() == [OK, OK, ALIASED, DEAD, OK, DUPLICATE]
    assert "untrained" not in blind.scalars() and "cos_start" not in blind.scalars()


def bank_with_movements(start: torch.Tensor, shares: list[float], seed: int) -> torch.Tensor:
    """Each start filter moved towards a random smooth pattern until 1 - cos^2 = share."""
    g = torch.Generator().manual_seed(seed)
    k = start.shape[-1]
    out = []
    for f, share in zip(start, shares):
        freq, angle = 0.05 + 0.1 * float(torch.rand(1, generator=g)), 3 * float(torch.rand(1))
        pattern = gabor(k, freq, k / 4, angle).float().expand_as(f).clone()
        out.append(planted(f, pattern, math.sqrt(1 - share)) if share > 0 else f.clone())
    return torch.stack(out)


def test_untrained_is_calibrated_per_layer_against_what_learning_moved():
    g = torch.Generator().manual_seed(21)
    # conv1-like: most filters left their start (movement 0.95), three kept it (0.3)
    start1 = torch.randn(12, 3, 7, 7, generator=g)
    moves1 = [0.95] * 9 + [0.3] * 3
    r1 = filter_health(bank_with_movements(start1, moves1, 1), 2, initial=start1)
    assert r1.movement.tolist() == pytest.approx(moves1, abs=1e-5)
    assert r1.untrained_below == pytest.approx(0.75)  # the first layer's floor
    # in a deeper layer (24 input channels) the same movements: a third of the median decides
    deep = torch.randn(12, 24, 7, 7, generator=g)
    r_deep = filter_health(bank_with_movements(deep, moves1, 4), 2, initial=deep)
    assert r_deep.untrained_below == pytest.approx(0.95 / 3, abs=1e-5)
    assert torch.nonzero(r_deep.untrained).flatten().tolist() == [9, 10, 11]
    # a first layer that barely moved (5-13%: its pictures show the start) is untrained
    moves = [0.05 + 0.01 * i for i in range(9)] + [0.13] * 3
    barely = filter_health(bank_with_movements(start1, moves, 5), 2, initial=start1)
    assert barely.status.tolist() == [UNTRAINED] * 12
    assert torch.nonzero(r1.untrained).flatten().tolist() == [9, 10, 11]
    # conv2-like: every filter learned, but moved only 2-15% of its energy off a large start
    # (cosine 0.92-0.99, "untrained" by any cosine threshold that suits conv1): none untrained
    start2 = torch.randn(16, 24, 5, 5, generator=g)
    moves2 = [0.02 * 7.5 ** (i / 15) for i in range(16)]
    r2 = filter_health(bank_with_movements(start2, moves2, 2), 2, step=4, initial=start2)
    assert r2.cos_start.min() > 0.9 and not r2.untrained.any()
    assert r2.status.tolist() == [OK] * 16
    # the same layer frozen at its start (or only rescaled) is untrained throughout
    frozen = filter_health(start2 * 0.8, 2, step=4, initial=start2)
    assert frozen.status.tolist() == [UNTRAINED] * 16 and frozen.scalars()["untrained"] == 1.0


def test_a_status_changes_only_past_its_threshold_by_the_hysteresis_margin():
    g = torch.Generator().manual_seed(25)
    start = torch.randn(10, 3, 7, 7, generator=g)
    # filter 9 sits just above the untrained threshold (0.95 / 3 = 0.317)
    w = bank_with_movements(start, [0.95] * 9 + [0.33], 3)
    floor = {"untrained_floor": 1e-3}  # the relative threshold alone
    fresh = filter_health(w, 2, initial=start, **floor)
    assert fresh.status[9] == OK
    was = torch.full((10,), OK)
    was[9] = UNTRAINED
    assert filter_health(w, 2, initial=start, previous=was, **floor).status[9] == UNTRAINED
    w2 = bank_with_movements(start, [0.95] * 9 + [0.4], 3)  # 0.4 > 1.2 x 0.317: it has left
    assert filter_health(w2, 2, initial=start, previous=was, **floor).status[9] == OK


GABOR_FREQS = (0.03, 0.06, 0.09, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45)


@pytest.mark.parametrize(("k", "stride"), [(7, 2), (11, 4)])
def test_gabors_alias_exactly_when_their_carrier_is_past_nyquist(k, stride):
    # Gabors across frequencies, oriented off-axis, on a random start they moved far from: the
    # status is aliased from 1.2 x Nyquist (1/(2 stride)) up, ok up to Nyquist, at both strides
    g = torch.Generator().manual_seed(26)
    start = torch.randn(len(GABOR_FREQS), 3, k, k, generator=g)
    gabors = [rgb(gabor(k, f, k / 4, 0.3)) for f in GABOR_FREQS]
    w = torch.stack([planted(s, gb, 0.2) for s, gb in zip(start, gabors)])
    report = filter_health(w, stride, initial=start)
    nyquist = 1 / (2 * stride)
    for f, status, share in zip(GABOR_FREQS, report.status.tolist(), report.aliasing_learned):
        if f >= 1.2 * nyquist:
            assert status == ALIASED and share > 0.55, (f, share)
        elif f <= nyquist:  # ok (or a duplicate: the lowest carriers look alike)
            assert status in (OK, DUPLICATE) and share < 0.45, (f, share)
    # the continuous share of the whole filter, and the same Gabors without a start
    assert torch.all(report.aliasing[1:] >= report.aliasing[:-1] - 0.05)
    blind = filter_health(torch.stack(gabors), stride)
    assert blind.aliased.tolist() == report.aliased.tolist()
    # a Gabor at 0.2 cycles/px: aliased at stride 4, ok at stride 2
    at = GABOR_FREQS.index(0.2)
    assert report.status[at] == (ALIASED if stride == 4 else OK)


def test_random_filters_are_not_aliased_even_though_their_energy_is_above_nyquist():
    g = torch.Generator().manual_seed(27)
    for k, stride in ((7, 2), (11, 4)):
        noise = torch.randn(64, 3, k, k, generator=g)
        report = filter_health(noise, stride)
        assert float(report.aliasing.mean()) > 0.7 and not report.aliased.any()
        assert report.scalars()["unstructured"] == 1.0


def test_spectral_entropy_separates_structure_from_white_noise():
    # flat spectrum: a single tap; one bin: a whole-period cosine on the FFT grid
    delta = torch.zeros(1, 1, 8, 8)
    delta[0, 0, 3, 3] = 1.0
    assert float(spectral_entropy(power_spectra(delta, 8))) == pytest.approx(1.0, abs=1e-6)
    x = torch.arange(8, dtype=torch.float64)
    cosine = torch.cos(2 * math.pi * 2 * x / 8).expand(8, 8)[None, None].float()
    # two bins (+-2/8) hold everything: entropy log 2 / log 64
    assert float(spectral_entropy(power_spectra(cosine, 8))) == pytest.approx(1 / 6, abs=1e-5)
    # white noise sits in its own distribution: none of 2000 fresh filters 6 SD below its mean
    q = noise_entropy_floor((3, 7, 7))
    fresh = torch.randn(2000, 3, 7, 7, generator=torch.Generator().manual_seed(28))
    entropy = spectral_entropy(power_spectra(fresh))
    assert not bool((entropy < q).any()) and float(entropy.mean()) - q > 0.01
    # learned patterns are far below it: Gabors, blobs, the low-frequency DCT bank
    patterns = torch.stack([rgb(gabor(7, f, 1.75, 0.3)) for f in GABOR_FREQS])
    assert float(spectral_entropy(power_spectra(patterns)).max()) < q - 0.1
    assert filter_health(low_frequency_bank(), 2).structured.all()


def test_peak_frequency_on_the_absolute_axis():
    bank = torch.stack([rgb(gabor(11, f, 11 / 4, 0.3)) for f in (0.15, 0.2, 0.3, 0.4)])
    peak = peak_frequency(power_spectra(bank))
    assert peak.tolist() == pytest.approx([0.15, 0.2, 0.3, 0.4], abs=1 / 64)
    assert float(peak_frequency(power_spectra(bank), step=4)[0]) == pytest.approx(
        float(peak[0]) / 4
    )
    blob = rgb(gabor(11, 0.0, 2.0))[None]
    assert peak_frequency(power_spectra(blob)).tolist() == [0.0]
    report = filter_health(bank, 4)
    s = report.scalars()
    assert s["peak_mid"] == pytest.approx(0.5) and s["peak_freq"] == pytest.approx(
        0.2, abs=1 / 64
    )  # the lower middle


def test_cosine_to_start_is_scale_invariant_and_zero_for_a_zero_filter():
    start = torch.randn(3, 3, 5, 5, generator=torch.Generator().manual_seed(22))
    w = torch.stack([2 * start[0], -start[1], torch.zeros(3, 5, 5)])
    assert cosine_to(w, start).tolist() == pytest.approx([1.0, -1.0, 0.0], abs=1e-6)


# ---- one absolute frequency axis ------------------------------------------------------------------
def sinusoids(n: int, components: list[tuple[int, float]]) -> torch.Tensor:
    """An n x n filter: sum of amplitude * cos(2 pi m x / n) along x for (m, amplitude)."""
    x = torch.arange(n, dtype=torch.float64)
    row = sum(a * torch.cos(2 * math.pi * m * x / n) for m, a in components)
    return row.expand(n, n)[None, None].float()


def test_band_shares_of_known_sinusoids_on_the_absolute_axis():
    # Whole periods on a 32-tap filter with a 32-point FFT: each cosine's energy sits in its two
    # bins, so the band shares are a_i^2 / sum a^2 exactly. Bin m is m/32 cycles per tap, i.e.
    # m/(32 * step) cycles per input pixel; bands: low < 1/16 <= mid < 1/4 <= high.
    w = sinusoids(32, [(1, 1.0), (4, 2.0), (12, 3.0)])
    total = 1 + 4 + 9
    # step 1: 0.031 low, 0.125 mid, 0.375 high
    assert band_shares(w, 1, n_fft=32)[0].tolist() == pytest.approx(
        [1 / total, 4 / total, 9 / total], abs=1e-6
    )
    # step 2 (a layer above a stride-2 layer): 0.016 low, 0.0625 mid (edge), 0.1875 mid
    assert band_shares(w, 2, n_fft=32)[0].tolist() == pytest.approx(
        [1 / total, 13 / total, 0.0], abs=1e-6
    )
    # step 8: everything below 1/16
    assert band_shares(w, 8, n_fft=32)[0].tolist() == pytest.approx([1.0, 0.0, 0.0], abs=1e-6)


def test_white_noise_band_shares_and_aliasing_references():
    g = torch.Generator().manual_seed(23)
    noise = torch.randn(2000, 3, 7, 7, generator=g)
    assert band_shares(noise, 1).mean(0).tolist() == pytest.approx(
        noise_band_shares(1).tolist(), abs=0.005
    )
    assert noise_aliasing(2) == pytest.approx(1 - (33 / 64) ** 2)
    assert noise_aliasing(4) == pytest.approx(1 - (17 / 64) ** 2)
    assert noise_aliasing(1) == 0.0
    report = filter_health(noise[:200], 2)
    assert report.scalars()["aliasing_rel"] == pytest.approx(1.0, abs=0.02)
    assert report.scalars()["band_mid_rel"] == pytest.approx(1.0, abs=0.05)
    assert not report.aliased.any()


# ---- gridding ------------------------------------------------------------------------------------
def smooth_image(size: int, seed: int) -> torch.Tensor:
    """(3, size, size) random image low-pass filtered by a Gaussian (no periodic structure)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 3, size + 12, size + 12, generator=g, dtype=torch.float64)
    c = torch.arange(13, dtype=torch.float64) - 6
    k = torch.exp(-(c**2) / (2 * 2.0**2))
    k2 = (k[:, None] * k[None, :] / k.sum() ** 2).expand(3, 1, 13, 13)
    return nn.functional.conv2d(x, k2, groups=3)[0]


@pytest.mark.parametrize("period", [4, 8])
def test_gridding_ratio_of_planted_stride_periodic_energy(period):
    size = 6 * period
    plain = smooth_image(size, 24)
    tile = torch.randn(
        3, period, period, generator=torch.Generator().manual_seed(25), dtype=torch.float64
    )
    grid_pattern = tile.repeat(1, 6, 6)
    gridded = plain + 0.3 * plain.std() * grid_pattern / grid_pattern.std()
    r_plain, r_grid = gridding_ratio(plain, period), gridding_ratio(gridded, period)
    assert 0.3 < r_plain < 2.0  # no peak: harmonics look like their neighbours
    assert r_grid > 10 * r_plain
    # a pure period-p pattern has all its energy at the harmonics: nothing beside them
    assert gridding_ratio(grid_pattern, period) > 1e6
    assert math.isnan(gridding_ratio(torch.ones(3, size, size), period))
    with pytest.raises(ValueError, match="whole periods"):
        gridding_ratio(plain[:, :-1], period)


def test_crop_windows_clip_to_the_image_and_trim_to_whole_periods():
    images = torch.arange(2 * 1 * 20 * 20, dtype=torch.float32).view(2, 1, 20, 20)
    crops = crop_windows(images, torch.tensor([-3, 10]), torch.tensor([2, 0]), 11, 4)
    assert [tuple(c.shape) for c in crops] == [(1, 8, 8), (1, 8, 8)]
    assert torch.equal(crops[0], images[0, :, 0:8, 2:10])  # rows 0..7 of the clipped window 0..7
    assert torch.equal(crops[1], images[1, :, 10:18, 0:8])
    # a window with under two periods left inside the image is dropped
    kept = crop_windows(images, torch.tensor([17, 0]), torch.tensor([0, 0]), 11, 4)
    assert len(kept) == 1 and torch.equal(kept[0], images[1, :, 0:8, 0:8])


def test_a_channel_that_almost_never_fires_is_dead_and_the_verdict_has_a_dead_band():
    w = torch.randn(4, 3, 7, 7, generator=torch.Generator().manual_seed(29))
    observed = 100_000  # entries per channel; dead at or below 1e-3 of them (100)
    fresh = filter_health(w, 2, positive=torch.tensor([500, 0, 100, 101]), observed=observed)
    assert fresh.dead.tolist() == [False, True, True, False]
    assert fresh.scalars()["never_active"] == pytest.approx(0.5)
    # with previous statuses activity must change by a factor of 2: dying needs at most 50,
    # reviving over 200
    was = torch.tensor([OK, DEAD, OK, DEAD])
    counts = torch.tensor([95, 190, 50, 201])
    kept = filter_health(w, 2, positive=counts, observed=observed, previous=was)
    assert kept.dead.tolist() == [False, True, True, False]
    plain = filter_health(w, 2, positive=counts, observed=observed)
    assert plain.dead.tolist() == [True, False, True, False]  # the plain line: 100
    # without the entries counted, only a channel never positive is dead
    unknown = filter_health(w, 2, positive=torch.tensor([0, 1, 2, 3]))
    assert unknown.dead.tolist() == [True, False, False, False]
