"""AR-AT's asymmetric invariance loss and auto-balanced cross-entropy, and the TRADES loss.

The clever line of AR-AT is in :func:`invariance_loss`: the clean feature is the *target* and is detached there,
so the invariance gradient flows only into the adversarial path (shared convolutions, adv BN, predictor).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch.nn.functional as F
from torch import Tensor, nn


def predictor_width(dim: int, ratio: float) -> int:
    """Hidden units of a predictor: ``int(ratio * dim)`` (floor, as the authors' code), at least 1 when ``ratio > 0``.

    The authors' ``int(r * d)`` would build a zero-width predictor (a constant output) when ``r * d < 1``; here any
    ``ratio > 0`` keeps a working one-unit predictor instead. ``ratio == 0`` means no predictor (width 0).
    """
    return max(1, int(ratio * dim)) if ratio > 0 else 0


class Predictor(nn.Module):
    """``Linear(d, h, bias=False) -> BatchNorm1d -> ReLU -> Linear(h, d)`` with ``h = predictor_width(d, ratio)``;
    identity when ``ratio == 0``."""

    def __init__(self, dim: int, ratio: float) -> None:
        super().__init__()
        self.hidden = predictor_width(dim, ratio)
        if self.hidden == 0:
            self.net: nn.Module = nn.Identity()
        else:
            self.net = nn.Sequential(
                nn.Linear(dim, self.hidden, bias=False),
                nn.BatchNorm1d(self.hidden),
                nn.ReLU(inplace=True),
                nn.Linear(self.hidden, dim),
            )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)  # (B, d)


class Predictors(nn.Module):
    """One :class:`Predictor` per aligned layer, adversarial side only; keyed by layer name."""

    def __init__(self, feature_dims: Mapping[str, int], ratio: float) -> None:
        super().__init__()
        self.layers = tuple(feature_dims)
        # ModuleDict keys cannot hold dots.
        self.heads = nn.ModuleDict({k.replace(".", "/"): Predictor(d, ratio) for k, d in feature_dims.items()})

    def forward(self, feats: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {k: self.heads[k.replace(".", "/")](feats[k]) for k in self.layers}


def invariance_loss(pred_adv: Mapping[str, Tensor], feat_clean: Mapping[str, Tensor]) -> Tensor:
    """Mean over layers of ``1 - mean cos(h(z_adv), stopgrad(z_clean))``."""
    terms = []
    for name, p in pred_adv.items():
        target = feat_clean[name].detach()  # stop-gradient: the clean feature is the fixed target
        terms.append(1.0 - F.cosine_similarity(p, target, dim=1).mean())
    return sum(terms) / len(terms)  # type: ignore[return-value]


def balanced_ce(logits_adv: Tensor, logits_clean: Tensor, y: Tensor, a: float) -> tuple[Tensor, Tensor, Tensor]:
    """``a * CE(adv) + (1 - a) * CE(clean)``; ``a`` is the clean-BN branch's clean accuracy. Returns (total, ce_adv, ce_clean)."""
    ce_adv = F.cross_entropy(logits_adv, y)
    ce_clean = F.cross_entropy(logits_clean, y)
    return a * ce_adv + (1.0 - a) * ce_clean, ce_adv, ce_clean


def arat_loss(
    logits_adv: Tensor, logits_clean: Tensor, y: Tensor, pred_adv: Mapping[str, Tensor],
    feat_clean: Mapping[str, Tensor], *, a: float, gamma: float,
) -> dict[str, Tensor]:
    """The AR-AT objective ``a CE_adv + (1 - a) CE_clean + gamma * inv`` with its parts."""
    ce, ce_adv, ce_clean = balanced_ce(logits_adv, logits_clean, y, a)
    inv = invariance_loss(pred_adv, feat_clean)
    return {"loss": ce + gamma * inv, "ce_adv": ce_adv, "ce_clean": ce_clean, "inv_loss": inv}


def trades_kl(logits_adv: Tensor, logits_clean: Tensor) -> Tensor:
    """``KL(f(x) || f(x_adv))`` summed over classes, averaged over the batch (TRADES' robust term)."""
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.softmax(logits_clean, dim=1), reduction="batchmean")


def trades_loss(logits_adv: Tensor, logits_clean: Tensor, y: Tensor, *, beta: float) -> dict[str, Tensor]:
    """TRADES (Zhang et al. 2019): ``CE(f(x), y) + beta * KL(f(x) || f(x_adv))`` with its parts."""
    ce_clean = F.cross_entropy(logits_clean, y)
    kl = trades_kl(logits_adv, logits_clean)
    return {"loss": ce_clean + beta * kl, "ce_clean": ce_clean, "kl": kl,
            "ce_adv": F.cross_entropy(logits_adv.detach(), y)}
