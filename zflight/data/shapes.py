"""The embedded "shapes" data set: procedurally drawn objects on cluttered, textured backgrounds.

No download. Sample ``i`` of split ``s`` with seed ``seed`` is a pure function of (seed, s, i):
its parameters come from ``numpy.random.default_rng([seed, s, i])`` and are rasterised in
batches with signed-distance tests, so building 20k images takes seconds. Each sample is
(image, label, mask) where the mask marks the object's pixels (used to score attribution maps).

The background gratings stop at 8 cycles per image (0.125 cycles/px at 64 px). ``fine_texture``
adds one fine grating over the whole image, object included, at 0.15-0.4 cycles/px: content a
stride-4 first layer cannot sample without aliasing (the Fig. 6 ablation). Its parameters are drawn
after all the others, so the rest of every sample is the same with and without it. It is unrelated
to the label, so no net has a reason to learn it. ``texture_labels`` makes it carry the label: its
orientation is the class's (class k at (k + 1/2) * 180 / C degrees, +-0.3 of the spacing) and its
frequency lies at 0.15-0.24 cycles/px, between the Nyquist frequencies of a stride-4 (0.125) and a
stride-2 (0.25) first layer: a net gains from reading it, and only a stride-4 one must alias to.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch.utils.data import Dataset

CLASSES = ("circle", "square", "triangle", "cross", "star", "ring", "crescent", "ell")


def _inside(kind: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Membership of points (u, v), in the object's own frame (unit radius), in shape ``kind``."""
    name = CLASSES[kind]
    if name == "square":
        return torch.maximum(u.abs(), v.abs()) <= 0.75
    if name == "triangle":
        return (
            torch.stack(
                [
                    u * math.cos(a) + v * math.sin(a)
                    for a in (math.pi / 2, math.pi * 7 / 6, math.pi * 11 / 6)
                ]
            ).amax(0)
            <= 0.5
        )
    if name == "cross":
        return ((u.abs() <= 0.28) & (v.abs() <= 0.95)) | ((v.abs() <= 0.28) & (u.abs() <= 0.95))
    if name == "ell":
        return ((u >= -0.75) & (u <= -0.2) & (v.abs() <= 0.75)) | (
            (u.abs() <= 0.75) & (v >= 0.2) & (v <= 0.75)
        )
    rho = torch.sqrt(u * u + v * v)
    if name == "circle":
        return rho <= 0.95
    if name == "star":
        return rho <= 0.4 + 0.6 * (0.5 + 0.5 * torch.cos(5 * torch.atan2(v, u))) ** 2
    if name == "ring":
        return (rho <= 0.95) & (rho >= 0.55)
    return (rho <= 0.95) & ((u - 0.45) ** 2 + v * v >= 0.72**2)  # crescent


FINE_BAND = (0.15, 0.4)  # cycles per pixel of the optional fine grating
LABEL_BAND = (0.15, 0.24)  # ... when its orientation tells the class
NOISE_SEED = 51  # column of the per-sample noise seed; the fine grating's 4 columns follow it


def _params(
    seed: int,
    split: int,
    index: int,
    num_classes: int,
    fine_texture: bool = False,
    texture_labels: bool = False,
) -> np.ndarray:
    """The random parameters of one sample (deterministic in seed, split, index and option)."""
    rng = np.random.default_rng([seed, split, index])
    radius = rng.uniform(0.22, 0.36)
    cx, cy = rng.uniform(radius, 1 - radius, size=2)
    obj = rng.uniform(0, 1, 3)
    bg = rng.uniform(0, 1, 3)
    while np.abs(obj - bg).sum() < 0.9:
        bg = rng.uniform(0, 1, 3)
    waves = rng.uniform(-1, 1, size=(3, 4))  # three gratings: fx, fy, phase, amplitude
    lines = rng.uniform(0, 1, size=(4, 7))  # four clutter lines: x0, y0, angle, colour(3), on/off
    return np.concatenate(
        [
            [index % num_classes, radius, cx, cy, rng.uniform(0, 2 * math.pi)],
            obj,
            bg,
            waves.ravel(),
            lines.ravel(),
            [rng.integers(1 << 30)],
            _fine_params(rng, index % num_classes if texture_labels else None, num_classes)
            if fine_texture or texture_labels
            else [],
        ]
    )


def _fine_params(
    rng: np.random.Generator, label: int | None = None, num_classes: int = 1
) -> np.ndarray:
    """Fine grating: frequency (cycles/px), orientation, phase (radians) and amplitude; with a
    ``label``, the orientation is the class's and the frequency in ``LABEL_BAND`` (same draws)."""
    freq, turn = rng.uniform(0, 1), rng.uniform(0, 1)
    phase, amp = rng.uniform(0, 2 * math.pi), rng.uniform(0.06, 0.12)
    if label is None:
        lo, hi = FINE_BAND
        angle = turn * math.pi
    else:
        lo, hi = LABEL_BAND
        angle = (label + 0.5 + 0.6 * (turn - 0.5)) * math.pi / num_classes
    return np.array([lo + (hi - lo) * freq, angle, phase, amp])


def render(params: np.ndarray, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rasterise a (B, P) parameter batch into uint8 images (B, 3, S, S) and bool masks (B, S, S)."""
    p = torch.as_tensor(params, dtype=torch.float32)
    b = p.shape[0]
    kind, radius, cx, cy, theta = p[:, 0].long(), p[:, 1], p[:, 2], p[:, 3], p[:, 4]
    obj, bg = p[:, 5:8], p[:, 8:11]
    waves = p[:, 11:23].view(b, 3, 4)
    lines = p[:, 23:51].view(b, 4, 7)
    coords = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = coords.view(1, -1, 1), coords.view(1, 1, -1)

    texture = torch.zeros(b, size, size)
    for k in range(3):
        fx, fy, phase, amp = (waves[:, k, j].view(b, 1, 1) for j in range(4))
        texture += (0.08 + 0.07 * amp) * torch.sin(
            2 * math.pi * (3 + 5 * fx.abs()) * x * torch.sign(fx)
            + 2 * math.pi * (3 + 5 * fy.abs()) * y
            + math.pi * phase
        )
    image = (bg.view(b, 3, 1, 1) + texture.unsqueeze(1)).expand(b, 3, size, size).clone()
    for k in range(4):
        x0, y0, ang = (lines[:, k, j].view(b, 1, 1) for j in range(3))
        dist = ((x - x0) * torch.sin(ang * math.pi) - (y - y0) * torch.cos(ang * math.pi)).abs()
        on = (dist < 0.6 / size + 0.01) & (lines[:, k, 6].view(b, 1, 1) > 0.4)
        image = torch.where(on.unsqueeze(1), lines[:, k, 3:6].view(b, 3, 1, 1), image)

    dx, dy = (
        (x - cx.view(b, 1, 1)) / radius.view(b, 1, 1),
        (y - cy.view(b, 1, 1)) / radius.view(b, 1, 1),
    )
    c, s = torch.cos(theta).view(b, 1, 1), torch.sin(theta).view(b, 1, 1)
    u, v = c * dx + s * dy, -s * dx + c * dy
    mask = torch.zeros(b, size, size, dtype=torch.bool)
    for k in kind.unique().tolist():
        sel = kind == k
        mask[sel] = _inside(k, u[sel], v[sel])
    shade = 1 + 0.15 * (dx * c)  # a gentle lighting gradient across the object
    image = torch.where(mask.unsqueeze(1), obj.view(b, 3, 1, 1) * shade.unsqueeze(1), image)
    if p.shape[1] > NOISE_SEED + 1:  # fine texture, in pixel units so its frequency is per pixel
        freq, angle, phase, amp = (p[:, NOISE_SEED + 1 + j].view(b, 1, 1) for j in range(4))
        px, py = x * size, y * size
        arg = freq * (px * torch.cos(angle) + py * torch.sin(angle))
        image = image + (amp * torch.sin(2 * math.pi * arg + phase)).unsqueeze(1)

    gen = torch.Generator()
    noise = torch.stack(
        [
            torch.randn(3, size, size, generator=gen.manual_seed(int(seed)))
            for seed in params[:, NOISE_SEED]
        ]
    )
    image = image + 0.04 * noise
    return (image.clamp(0, 1) * 255 + 0.5).to(torch.uint8), mask


class ShapesDataset(Dataset):
    """``length`` samples of split ``split`` (0 train, 1 validation), rendered once into memory.

    Items are ``(image, label, mask)``: a normalised float (3, S, S) tensor, an int and a bool (S, S).
    """

    def __init__(
        self,
        length: int,
        image_size: int = 64,
        seed: int = 0,
        split: int = 0,
        num_classes: int = len(CLASSES),
        mean: tuple[float, ...] = (0.5, 0.5, 0.5),
        std: tuple[float, ...] = (0.25, 0.25, 0.25),
        chunk: int = 128,  # small batches stay in cache: 3.5x faster than 2048 on 2 cores
        fine_texture: bool = False,
        texture_labels: bool = False,
    ) -> None:
        if not 2 <= num_classes <= len(CLASSES):
            raise ValueError(f"data.num_classes must be in [2, {len(CLASSES)}], got {num_classes}")
        if length < 1 or image_size < 16:
            raise ValueError(
                f"need length >= 1 and image_size >= 16, got {length} and {image_size}"
            )
        self.class_names = list(CLASSES[:num_classes])
        params = np.stack(
            [
                _params(seed, split, i, num_classes, fine_texture, texture_labels)
                for i in range(length)
            ]
        )
        with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:  # torch frees the GIL
            parts = list(
                pool.map(
                    lambda i: render(params[i : i + chunk], image_size), range(0, length, chunk)
                )
            )
        self.images = torch.cat([im for im, _ in parts])
        self.masks = torch.cat([m for _, m in parts])
        self.labels = torch.as_tensor(params[:, 0], dtype=torch.long)
        self.mean = torch.as_tensor(mean).view(3, 1, 1) * 255
        self.std = torch.as_tensor(std).view(3, 1, 1) * 255

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, torch.Tensor]:
        return (self.images[i].float() - self.mean) / self.std, int(self.labels[i]), self.masks[i]

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
        idx = torch.as_tensor(indices)
        images = (self.images[idx].float() - self.mean) / self.std
        return [(images[k], int(self.labels[i]), self.masks[i]) for k, i in enumerate(indices)]
