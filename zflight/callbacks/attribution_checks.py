"""AttributionCallback: what every callback that draws attribution maps reports beside its maps.

- localisation scores with their baselines (the image centre, a uniform random map as an exact
  expectation) and the margin over the better one (``zflight.analysis.localization``);
- deletion and insertion AUC beside a random pixel order, every ``faithfulness_every_n_epochs``
  (``zflight.analysis.faithfulness``), with a small curve figure;
- the model-randomisation sanity check every ``sanity_every_n_epochs``: the maps with the layers
  set back to the run's start weights from the top, their rank correlation with the trained
  net's, a figure across depth, and one line for a method whose maps survive
  (``zflight.analysis.sanity``).

Subclasses name their methods by scalar prefix (``{"": "Grad-CAM", "saliency_": "saliency"}``)
and call ``localisation``, ``faithfulness`` and ``sanity`` from ``analyze`` on every rank.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from zflight.analysis.faithfulness import auc, deletion_insertion, pixel_order, random_order
from zflight.analysis.images import title_bar
from zflight.analysis.localization import scores_with_baselines
from zflight.analysis.occlusion import fill_images
from zflight.analysis.sanity import SURVIVES, cascading_randomisation, spearman
from zflight.callbacks.attribution_figures import plot_faithfulness, randomisation_grid
from zflight.callbacks.base import AnalysisContext, VisualizationCallback, network_of
from zflight.callbacks.results import Figure, Probe

Maps = dict[str, Tensor]  # scalar prefix -> (N, H, W) maps


class AttributionCallback(VisualizationCallback):
    """Base of the attribution callbacks: scores with baselines, faithfulness, sanity check.

    Args:
        faithfulness_every_n_epochs: deletion/insertion curves every this many epochs (and on
            the last epoch and in ``zflight visualize``); 0 switches them off.
        faithfulness_steps: points on each curve after the first (pixels change in
            ``1/steps`` shares of the image).
        faithfulness_images: the first this many images of the score set (0: all of it).
        faithfulness_batch: copies per forward pass.
        sanity_every_n_epochs: the randomisation check every this many epochs (and on the last
            and in ``zflight visualize``); 0 switches it off and keeps no start weights.
        sanity_probes: drawn probe images the check uses.
        **kwargs: ``VisualizationCallback``'s arguments.
    """

    methods: dict[str, str] = {"": "map"}

    def __init__(
        self,
        faithfulness_every_n_epochs: int = 1,
        faithfulness_steps: int = 10,
        faithfulness_images: int = 32,
        faithfulness_batch: int = 256,
        sanity_every_n_epochs: int = 1,
        sanity_probes: int = 4,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        for key, value, low in (
            ("faithfulness_every_n_epochs", faithfulness_every_n_epochs, 0),
            ("faithfulness_steps", faithfulness_steps, 1),
            ("faithfulness_images", faithfulness_images, 0),
            ("faithfulness_batch", faithfulness_batch, 1),
            ("sanity_every_n_epochs", sanity_every_n_epochs, 0),
            ("sanity_probes", sanity_probes, 1),
        ):
            if value < low:
                raise ValueError(f"{key} must be >= {low}, got {value}")
        self.faithfulness_every_n_epochs = faithfulness_every_n_epochs
        self.faithfulness_steps = faithfulness_steps
        self.faithfulness_images = faithfulness_images
        self.faithfulness_batch = faithfulness_batch
        self.sanity_every_n_epochs = sanity_every_n_epochs
        self.sanity_probes = sanity_probes
        self.start_weights: dict[str, Tensor] | None = None
        self.start_epoch: int | None = None
        self._announced: set[str] = set()

    # ---- the start weights (the sanity check's random draw) ----------------------------------
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sanity_every_n_epochs and self.start_weights is None:
            self.capture_start(network_of(pl_module), trainer.current_epoch)

    def capture_start(self, model: nn.Module, epoch: int = 0) -> None:
        """Keep ``model``'s weights as the start (on the CPU; kept in the checkpoint state)."""
        self.start_weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        self.start_epoch = epoch

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.start_weights is not None:
            state.update(start_weights=self.start_weights, start_epoch=self.start_epoch)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if "start_weights" in state_dict:
            self.start_weights = dict(state_dict["start_weights"])
            self.start_epoch = state_dict.get("start_epoch")

    # ---- the checks ----------------------------------------------------------------------------
    def due(self, every: int, ctx: AnalysisContext) -> bool:
        """Whether a check run every ``every`` epochs is due now (0: never)."""
        if every <= 0:
            return False
        if _single(ctx):
            return True  # a single analysis (post hoc): every check
        last = ctx.epoch == ctx.trainer.max_epochs - 1
        return (ctx.epoch + 1) % every == 0 or (last and self.on_last_epoch)

    def fills(self, probe: Probe) -> Tensor:
        """What a removed pixel shows in the deletion and insertion curves: the callback's
        ``fill`` (the data set mean by default) as the occluder shows it."""
        size = getattr(self, "size", max(1, probe.images.shape[-1] // 8))
        fill = getattr(self, "fill", "mean")
        return fill_images(probe.images, fill, (size, size), probe.mean, probe.std)

    def _final(self, ctx: AnalysisContext) -> bool:
        """The last epoch of a fit, or a single post-hoc analysis."""
        return _single(ctx) or 0 < ctx.trainer.max_epochs <= ctx.epoch + 1

    def localisation(self, maps: Maps, masks: Tensor) -> dict[str, float]:
        """Pointing game and mass in mask of each method beside both baselines, with margins."""
        out: dict[str, float] = {}
        for prefix, m in maps.items():
            out.update(scores_with_baselines(m, masks.to(m.device), prefix))
        return out

    def scores(
        self, model: nn.Module, scored: Probe, maps: Maps, ctx: AnalysisContext
    ) -> tuple[dict[str, float], dict[str, Figure]]:
        """The scores every attribution callback reports on its score set: localisation where the
        data has masks, and deletion/insertion when due (with its figure)."""
        scalars: dict[str, float] = {}
        figures: dict[str, Figure] = {}
        if scored.masks is not None:
            scalars.update(self.localisation(maps, scored.masks))
        if self.due(self.faithfulness_every_n_epochs, ctx):
            fills = self.fills(scored)
            values, fig = self.faithfulness(model, scored.images, scored.labels, fills, maps, ctx)
            scalars.update(values)
            if fig is not None:
                figures["faithfulness"] = fig
        return scalars, figures

    def faithfulness(
        self,
        model: nn.Module,
        images: Tensor,
        labels: Tensor,
        fills: Tensor,
        maps: Maps,
        ctx: AnalysisContext,
    ) -> tuple[dict[str, float], Figure | None]:
        """Deletion and insertion AUC of each method's pixel order and of a random order (the same
        seeded draws every epoch), split across ranks. Keys per method prefix ``p``:
        ``p{deletion,insertion}_auc``, ``..._auc_baseline_random`` and ``..._margin`` (how much
        better than random: random minus deletion, insertion minus random). The figure is drawn
        on rank 0 only."""
        if self.faithfulness_images:
            keep = slice(0, self.faithfulness_images)
            images, labels, fills = images[keep], labels[keep], fills[keep]
            maps = {p: m[keep] for p, m in maps.items()}
        g = torch.Generator().manual_seed(self.probe_seed + 17)
        n, pixels = images.shape[0], images.shape[2] * images.shape[3]
        orders = [pixel_order(m.cpu(), g) for m in maps.values()]
        # the same random orders for every callback scoring the same images
        orders.append(random_order(n, pixels, torch.Generator().manual_seed(self.probe_seed + 18)))
        curves = deletion_insertion(
            model,
            images,
            labels,
            fills,
            torch.stack(orders),
            steps=self.faithfulness_steps,
            batch_size=self.faithfulness_batch,
            rank=ctx.rank,
            world_size=ctx.world_size,
            all_gather=ctx.all_gather,
            autocast=ctx.autocast,
        )
        areas = auc(curves).mean(-1)  # (M, 2)
        rnd = (float(areas[-1, 0]), float(areas[-1, 1]))
        scalars: dict[str, float] = {}
        per_method: dict[str, tuple[float, float]] = {}
        for k, prefix in enumerate(maps):
            d, i = float(areas[k, 0]), float(areas[k, 1])
            per_method[self.methods.get(prefix, prefix)] = (d, i)
            scalars.update(
                {
                    f"{prefix}deletion_auc": d,
                    f"{prefix}deletion_auc_baseline_random": rnd[0],
                    f"{prefix}deletion_margin": rnd[0] - d,
                    f"{prefix}insertion_auc": i,
                    f"{prefix}insertion_auc_baseline_random": rnd[1],
                    f"{prefix}insertion_margin": i - rnd[1],
                }
            )
        if ctx.rank != 0:
            return scalars, None
        named = {self.methods.get(p, p): curves[k] for k, p in enumerate(maps)}
        picture = plot_faithfulness(named, curves[-1], per_method, rnd)
        lines = [
            f"{name}: deletion {d:.3f}, insertion {i:.3f}" for name, (d, i) in per_method.items()
        ]
        text = (
            f"Deletion and insertion (RISE) on {n} validation images, epoch {ctx.epoch}: "
            f"pixels removed (set to the fill) or revealed in the map's order, "
            f"{self.faithfulness_steps} steps; mean p(true class). Area under the curve: "
            + "; ".join(lines)
            + f"; a random order: deletion {rnd[0]:.3f}, insertion {rnd[1]:.3f}. "
            "A faithful map deletes below and inserts above the random order."
        )
        title = f"Faithfulness, epoch {ctx.epoch}"
        return scalars, Figure(title_bar(picture, title), text)

    def sanity(
        self,
        model: nn.Module,
        attribute: Callable[[nn.Module], Maps],
        pictures: list[np.ndarray],
        ctx: AnalysisContext,
    ) -> tuple[dict[str, float], Figure | None, list[str]]:
        """The cascading randomisation check; ``attribute(net)`` returns every method's maps of
        the same images (``pictures``, shown in the figure). Returns the scalars (per method
        prefix ``p``: ``psanity_spearman``, the mean rank correlation with every layer
        randomised), the figure (rank 0) and one line per method whose maps survive."""
        if self.start_weights is None:
            return {}, None, []
        depths = cascading_randomisation(model, self.start_weights, attribute)
        trained = depths[0][1]
        rho = {p: [spearman(trained[p], maps[p]) for _, maps in depths] for p in trained}
        scalars = {f"{p}sanity_spearman": float(r[-1].mean()) for p, r in rho.items()}
        said = {
            p: f"{self.methods.get(p, p)} maps survive randomisation: rank correlation "
            f"{scalars[f'{p}sanity_spearman']:.2f} with the trained net's with every layer "
            "randomised, so they show the input more than what the network learned."
            for p in rho
            if scalars[f"{p}sanity_spearman"] >= SURVIVES
        }
        survivors = list(said.values())
        if self._final(ctx):  # said once, of the trained net's maps
            for p in said.keys() - self._announced:
                self._announced.add(p)
                rank_zero_warn(said[p])
        if ctx.rank != 0:
            return scalars, None, survivors
        named_depths = [
            (layer, {self.methods.get(p, p): m for p, m in maps.items()}) for layer, maps in depths
        ]
        named_rho = {self.methods.get(p, p): r for p, r in rho.items()}
        body = randomisation_grid(pictures, named_depths, named_rho)
        per_depth = [
            f"{self.methods.get(p, p)}: "
            + ", ".join(f"{layer} {float(r[d].mean()):.2f}" for d, (layer, _) in enumerate(depths))
            for p, r in rho.items()
            if len(depths) > 1
        ]
        text = (
            f"Model randomisation check, epoch {ctx.epoch}, on {len(pictures)} probe images: "
            "each method's map with the layers set to the run's start weights cumulatively from "
            "the top down to the named layer; the number is the Spearman rank correlation with "
            "the trained net's map (mean per depth: "
            + "; ".join(per_depth)
            + "). A map that explains the network decorrelates as the weights go. "
            + (" ".join(survivors) if survivors else "No method's maps survive randomisation.")
        )
        title = f"Randomisation check, epoch {ctx.epoch}"
        note = "Columns: the trained net, then the layers randomised from the top down to each."
        return scalars, Figure(title_bar(body, title, note), text), survivors


def _single(ctx: AnalysisContext) -> bool:
    """A single analysis outside a fit: ``validate`` (``zflight visualize``) or no trainer."""
    trainer = getattr(ctx, "trainer", None)
    state = getattr(trainer, "state", None)
    return getattr(trainer, "max_epochs", None) is None or getattr(state, "fn", None) == "validate"


def score_text(scalars: dict[str, float], prefix: str, name: str) -> str:
    """One sentence: the method's pointing game and mass in mask beside both baselines."""
    if f"{prefix}pointing_game" not in scalars:
        return ""
    parts = []
    for score, label in (("pointing_game", "pointing game"), ("mass_in_mask", "mass in mask")):
        v = scalars[f"{prefix}{score}"]
        c = scalars[f"{prefix}{score}_baseline_centre"]
        r = scalars[f"{prefix}{score}_baseline_random"]
        margin = scalars[f"{prefix}{score}_margin"]
        verdict = "beats both" if margin > 0 else "does not beat the better"
        parts.append(f"{label} {v:.2f} (centre {c:.2f}, random {r:.2f}: {verdict}, {margin:+.2f})")
    return f"{name}: " + "; ".join(parts) + "."
