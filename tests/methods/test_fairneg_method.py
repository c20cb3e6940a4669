"""FairNeg module and its baselines: draws vs oracle (chi-square), G-BCE update by hand, bad input, resume,
2-process DDP parity."""
import csv
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from scipy.stats import chisquare
from test_fairneg_sampler import oracle_probs
from toy_data import write_toy_dataset

from fairlit.data import RecDataModule
from fairlit.methods import BPR, DNS, FairNeg, FairStatic, MeanScoreReg
from fairlit.methods._fairneg_sampler import draw_stacked, stacked_cdf
from fairlit.models import MF
from tests.conftest import ReleaseProcessGroup

GENRES = ("Sci-Fi", "Horror", "Children's")


def make_data(root: Path, num_users: int = 20, num_items: int = 24, per_user: int = 10,
              seed: int = 0) -> Path:
    """Each user rates ``per_user`` random items; item i has GENRES[i % 3] + Drama."""
    return write_toy_dataset(root, num_users, num_items, per_user, seed, lambda rng, i: f"{GENRES[i % 3]} Drama")


def datamodule(folder: Path, batch_size: int = 32, **kwargs) -> RecDataModule:
    args = dict(dataset=str(folder), split="random", split_ratios=(0.6, 0.2, 0.2),
                item_group="genre_exclusive", item_group_genres=list(GENRES), batch_size=batch_size,
                eval_batch_size=64, seed=3)
    return RecDataModule(**(args | kwargs))


def module(dm: RecDataModule, cls=FairNeg, **kwargs):
    args = dict(num_users=dm.num_users, num_items=dm.num_items, num_item_groups=dm.num_item_groups, ks=[5],
                lr=0.01, reg_weight=0.05)
    if issubclass(cls, FairNeg):
        args["sample_seed"] = 7
    return cls(lambda u, i: MF(u, i, dim=8), **(args | kwargs))


def trainer(root: Path, **kwargs) -> L.Trainer:
    args = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, deterministic=True,
                limit_val_batches=0, default_root_dir=str(root))
    return L.Trainer(**(args | kwargs))


def attach(m: FairNeg, dm: RecDataModule) -> FairNeg:
    m.set_training_data(dm.train_users, dm.train_items, dm.train_csr, dm.item_group, dm.item_group_csr)
    return m


@pytest.fixture
def dm(tmp_path):
    return datamodule(make_data(tmp_path))


# ----------------------------------------------------------------------------------------- distribution
def test_module_draws_follow_intended_probabilities(dm):
    m = attach(module(dm, w_fair=0.6), dm)
    m.p.copy_(torch.tensor([0.5, 0.2, 0.3], dtype=torch.float64))
    m._snapshot = m._all_embeddings()
    users = torch.arange(dm.num_users)
    probs = m.mix_probs(users)
    mask = torch.zeros(dm.num_users, dm.num_items, dtype=torch.bool)
    mask[dm.train_users, dm.train_items] = True
    user_vecs, item_vecs = m._snapshot
    intended = oracle_probs((user_vecs @ item_vecs.T).double().numpy(), mask.numpy(), dm.item_group.numpy(),
                            m.p.numpy(), 0.6, 0.4, "sigmoid")
    np.testing.assert_allclose(probs.numpy(), intended, rtol=1e-5, atol=1e-7)
    flat = stacked_cdf(probs, users).flatten()
    draws = 100_000
    for user in (0, 7):
        rows = torch.full((draws,), user)
        neg = draw_stacked(flat, rows, torch.rand(draws, generator=torch.Generator().manual_seed(user),
                                                  dtype=torch.float64), dm.num_items)
        counts = np.bincount(neg.numpy(), minlength=dm.num_items)
        allowed = ~mask[user].numpy()
        assert counts[~allowed].sum() == 0
        assert chisquare(counts[allowed], intended[user, allowed] * draws).pvalue > 1e-3


def test_epoch_table_and_per_batch_draws_agree(dm):
    table = attach(module(dm), dm)
    table.on_train_epoch_start()                     # no trainer: logging is skipped with a warning
    per_batch = attach(module(dm, epoch_table_max=0), dm)
    per_batch.load_state_dict(table.state_dict())
    per_batch.on_train_epoch_start()
    assert table._epoch_neg is not None and per_batch._epoch_neg is None
    a = table.draw_negatives(dm.train_users, dm.train_items)
    b = per_batch.draw_negatives(dm.train_users, dm.train_items)
    assert (a == b).float().mean() > 0.99            # equal up to CDF rounding at segment boundaries
    assert not torch.zeros(dm.num_users, dm.num_items, dtype=torch.bool).index_put_(
        (dm.train_users, dm.train_items), torch.tensor(True))[dm.train_users, a].any()


# ----------------------------------------------------------------------------------------- outer step
def test_outer_update_matches_hand_computation(dm):
    m = attach(module(dm, gamma=0.1, alpha=0.1), dm)
    share = torch.bincount(dm.item_group[dm.train_items], minlength=3).double()
    torch.testing.assert_close(m.p, share / share.sum())                      # FairStatic initialisation
    p0 = m.p.clone()
    u, i = m.backbone.user_embedding.weight, m.backbone.item_embedding.weight
    nll = F.softplus(-(u[dm.train_users] * i[dm.train_items]).sum(1)).double().detach()
    groups = dm.item_group[dm.train_items]
    losses = torch.stack([nll[groups == a].mean() for a in range(3)])
    v = 0.1 * (losses - losses.mean())
    got = m.outer_update()
    torch.testing.assert_close(got, losses)
    torch.testing.assert_close(m.v, v)
    torch.testing.assert_close(m.p, p0 - v)
    # Second step: v <- γ v + α ∇ with the same model (same ∇).
    m.outer_update()
    v2 = 0.1 * v + 0.1 * (losses - losses.mean())
    torch.testing.assert_close(m.p, p0 - v - v2)
    assert int(m.num_updates) == 2


def test_item_share_init_and_frozen_variants(dm):
    m = attach(module(dm, init="item_share"), dm)
    torch.testing.assert_close(m.p, torch.bincount(dm.item_group).double() / dm.num_items)
    static = attach(module(dm, FairStatic), dm)
    assert static.hparams.w_fair == 1.0 and not static.hparams.dynamic


# ----------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(w_fair=1.5), "w_fair"), (dict(w_fair=-0.1), "w_fair"), (dict(num_item_groups=1), "2 item groups"),
    (dict(tau=0.0), "tau"), (dict(p_min=0.5), "p_min"), (dict(imp_score="x"), "imp_score"),
    (dict(init="x"), "init"), (dict(tau=float("nan")), "tau"), (dict(gamma=float("nan")), "gamma"),
    (dict(reg_weight=-1.0), "reg_weight")])
def test_bad_configuration(dm, kwargs, match):
    with pytest.raises(ValueError, match=match):
        module(dm, **kwargs)


def test_bad_data(dm):
    m = module(dm)
    with pytest.raises(ValueError, match="no items"):
        m.set_training_data(dm.train_users, dm.train_items, dm.train_csr, dm.item_group.clamp(max=1))
    indptr = torch.tensor([0, dm.num_items] + [dm.num_items] * (dm.num_users - 1))
    full = (indptr, torch.arange(dm.num_items))
    with pytest.raises(ValueError, match="negative pool is empty"):
        m.set_training_data(torch.zeros(dm.num_items, dtype=torch.long), torch.arange(dm.num_items), full,
                            dm.item_group)
    keep = dm.item_group[dm.train_items] != 1  # group 1 keeps its items but loses its training positives
    with pytest.raises(ValueError, match=r"item group\(s\) \[1\] have items but no training interaction"):
        m.set_training_data(dm.train_users[keep], dm.train_items[keep], dm.train_csr, dm.item_group)
    with pytest.raises(ValueError, match="binary"):
        module(dm, MeanScoreReg)


def test_sequential_backbone_is_refused_at_setup(tmp_path):
    from fairlit.models import GRU4Rec

    dm = datamodule(make_data(tmp_path), history_length=3)
    m = FairNeg(lambda u, i: GRU4Rec(u, i, dim=8, hidden_size=8), num_users=dm.num_users, num_items=dm.num_items,
                num_item_groups=dm.num_item_groups, ks=[5])
    with pytest.raises(ValueError, match="not the sequential GRU4Rec"):
        trainer(tmp_path, fast_dev_run=True).fit(m, dm)


def test_dns_pool_smaller_than_candidates(tmp_path):
    dm = datamodule(make_data(tmp_path), num_negatives=20)       # 24 items, up to 6 training positives
    with pytest.raises(ValueError, match="candidates"):
        trainer(tmp_path, fast_dev_run=True).fit(module(dm, DNS), dm)


# ----------------------------------------------------------------------------------------- baselines
def test_dns_trains_on_hardest_candidate(dm):
    m = module(dm, DNS)
    batch = {"user": torch.tensor([0, 1]), "pos": torch.tensor([1, 2]),
             "neg": torch.tensor([[3, 4, 5], [6, 7, 8]])}
    scores = m.score(batch, batch["neg"])
    hardest = batch["neg"].gather(1, scores.argmax(1, keepdim=True))
    want = BPR.training_loss(m, {**batch, "neg": hardest})
    torch.testing.assert_close(m.training_loss(batch), want)


def test_bpr_on_sigmoid_loss_by_hand(dm):
    # FairDiverse's BPR model scores σ(ŷ): loss = mean_b mean_m softplus(σ(ŷ⁻) − σ(ŷ⁺)) + λ·reg.
    m = module(dm, BPR, bpr_on_sigmoid=True)
    batch = {"user": torch.tensor([0, 1, 2]), "pos": torch.tensor([1, 2, 3]),
             "neg": torch.tensor([[4, 5], [6, 7], [8, 9]])}
    user, item = m.backbone.user_embedding.weight, m.backbone.item_embedding.weight
    pos = torch.sigmoid((user[batch["user"]] * item[batch["pos"]]).sum(1))
    neg = torch.sigmoid((user[batch["user"], None] * item[batch["neg"]]).sum(2))
    reg = m.backbone.regularization(batch["user"], batch["pos"], batch["neg"])
    want = torch.log1p(torch.exp(neg - pos[:, None])).mean() + 0.05 * reg
    torch.testing.assert_close(m.training_loss(batch), want)
    assert not torch.allclose(module(dm, BPR).training_loss(batch), want)


def test_mean_score_reg_penalty(tmp_path):
    folder = make_data(tmp_path)
    dm = datamodule(folder, item_group_genres=["Sci-Fi", "Horror"])
    m = module(dm, MeanScoreReg, reg_lambda=0.3)
    m.register_buffer("item_group", dm.item_group, persistent=False)
    batch = {"user": torch.tensor([0, 1, 2]), "pos": torch.tensor([0, 1, 2]),
             "neg": torch.tensor([[3], [4], [5]])}
    s = m.score(batch, batch["pos"].unsqueeze(1)).squeeze(1)
    g = dm.item_group[batch["pos"]]
    gap = s[g == 0].mean() - s[g == 1].mean() if (g == 0).any() and (g == 1).any() else torch.tensor(0.0)
    torch.testing.assert_close(m.training_loss(batch), BPR.training_loss(m, batch) + 0.3 * gap**2)


def test_group_diagnostics_reach_the_logger(tmp_path, dm):
    m = module(dm)
    trainer(tmp_path, max_epochs=2, logger=CSVLogger(tmp_path, name="log", version=0)).fit(m, dm)
    with open(tmp_path / "log" / "version_0" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    groups = range(dm.num_item_groups)
    p_rows = [r for r in rows if r["fairneg/p_g0"]]
    np.testing.assert_allclose([float(p_rows[-1][f"fairneg/p_g{a}"]) for a in groups], m.p.numpy())
    share = [r for r in rows if r["fairneg/neg_share_g0"]][-1]
    assert sum(float(share[f"fairneg/neg_share_g{a}"]) for a in groups) == pytest.approx(1.0)
    assert sum(1 for r in rows if r["fairneg/gbce_g0"]) == 1  # the outer update runs once, at the start of epoch 2


# ----------------------------------------------------------------------------------------- resume, DDP
def test_resume_continues_same_distribution(tmp_path, dm):
    L.seed_everything(0)
    straight = module(dm, outer_update_at="epoch_start")
    trainer(tmp_path / "a", max_epochs=3).fit(straight, dm)
    L.seed_everything(0)
    first = module(dm, outer_update_at="epoch_start")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    trainer(tmp_path / "b", max_epochs=2, enable_checkpointing=True, callbacks=[ckpt]).fit(first, dm)
    resumed = module(dm, outer_update_at="epoch_start")
    trainer(tmp_path / "c", max_epochs=3).fit(resumed, dm, ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    assert int(resumed.num_updates) == 3
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("outer_update_at", ["epoch_start"])
def test_ddp_two_processes_equal_one(tmp_path, outer_update_at):
    folder = make_data(tmp_path, num_users=16, per_user=10)
    dm1, dm2 = datamodule(folder, batch_size=16), datamodule(folder, batch_size=8)
    assert len(dm1.train_users) % 2 == 0                     # no DistributedSampler padding
    L.seed_everything(0)
    one = module(dm1, outer_update_at=outer_update_at)
    trainer(tmp_path / "one", max_epochs=2).fit(one, dm1)
    L.seed_everything(0)
    two = module(dm2, outer_update_at=outer_update_at)
    trainer(tmp_path / "two", max_epochs=2, devices=2, strategy="ddp_spawn",
            callbacks=[ReleaseProcessGroup()]).fit(two, dm2)
    assert int(two.num_updates) == int(one.num_updates) == 2
    torch.testing.assert_close(two.p, one.p, rtol=0, atol=1e-6)
    torch.testing.assert_close(two.v, one.v, rtol=0, atol=1e-6)
    torch.testing.assert_close(two.backbone.item_embedding.weight, one.backbone.item_embedding.weight,
                               rtol=0, atol=1e-5)
