"""FairNeg's negative-sampling baselines (spec §5): BPR with another sampler.

UNS is plain `BPR` with the data module's uniform negatives. NNCF and DNS reuse the data module's
vectorised samplers (popularity-weighted / M uniform candidates); FairStatic is FairNeg's sampler with p
frozen at the feedback shares and no importance part.
"""
import torch
from torch import Tensor

from fairlit.methods.bpr import BPR
from fairlit.methods.fairneg import FairNeg


def _datamodule(module: BPR):
    return module.trainer.datamodule if module._trainer is not None else None


class NNCF(BPR):
    r"""Popularity-based static negative sampling (Chen et al., KDD 2017): :math:`P(j) \propto pop(j)^{0.5}`
    over the user's non-interacted items, pop = training interaction count.

    The draw itself is the data module's (``negative_sampling: popularity``, ``popularity_exponent``,
    grid {0.5, 0.75, 1.0}); this class only checks that the data is configured that way.
    """

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = _datamodule(self)
        if dm is not None and dm.hparams.negative_sampling != "popularity":
            raise ValueError("NNCF needs data.negative_sampling='popularity' (and popularity_exponent, 0.5 "
                             f"in FairNeg's code); got {dm.hparams.negative_sampling!r}")


class DNS(BPR):
    """Dynamic negative sampling (Zhang et al., SIGIR 2013): of M uniform candidates from the user's
    non-interacted items, train on the one the current model scores highest.

    M is the data module's ``num_negatives`` (spec: M = 10, grid {5, 10, 20}).
    """

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = _datamodule(self)
        if dm is None:
            return
        m = dm.hparams.num_negatives
        if m < 2 or dm.hparams.negative_sampling != "uniform":
            raise ValueError(f"DNS needs data.num_negatives >= 2 uniform candidates, got {m} "
                             f"({dm.hparams.negative_sampling})")
        indptr = dm.train_csr[0]
        pool = self.hparams.num_items - indptr.diff()[torch.unique(dm.train_users)]
        if int(pool.min()) < m:
            raise ValueError(f"DNS asks for {m} candidates but a user has only {int(pool.min())} "
                             "non-interacted items")

    def negatives(self, batch: dict[str, Tensor]) -> Tensor:
        cand = batch["neg"]                                                              # [B, M]
        with torch.no_grad():
            hardest = self.score(batch, cand).argmax(1, keepdim=True)                    # [B, 1]
        return cand.gather(1, hardest)

    def negatives_follow_model(self) -> bool:
        return True


class FairStatic(FairNeg):
    """Static fair sampling: group p frozen at the groups' shares of training positives, items uniform
    within a group among the user's candidates (FairNeg with ``w_fair=1``, ``dynamic=False``)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, w_fair=1.0, dynamic=False, init="fairstatic", **kwargs)
