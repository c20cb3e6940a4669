"""`fused_step=True` (fairlit.ops.bpr_adam_step) trains what autograd + Adam train: BPR, FairNeg, DNS, FairDual
and a reweighting baseline, over several Lightning steps of several batches, checkpoint resume, and clear errors
where it does not apply."""
import csv

import lightning as L
import pytest
import test_fairdual_method as fairdual_data
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from test_fairneg_method import datamodule, make_data, module, trainer

from fairlit import ops
from fairlit.methods import BPR, DNS, DPR, DRO, SDRO, FairDual, FairNeg, MeanScoreReg
from fairlit.methods.weighted import WeightedLoss
from fairlit.models import MF, LightGCN


def fit(root, dm, cls, epochs=2, double=False, **kwargs):
    L.seed_everything(0)
    m = module(dm, cls, **kwargs)
    if double:
        m = m.double()
    trainer(root, max_epochs=epochs, precision="64-true" if double else "32-true").fit(m, dm)
    return m


@pytest.mark.parametrize("cls, kwargs", [(BPR, {}), (FairNeg, {}), (FairNeg, dict(imp_refresh="batch")), (DNS, {}),
                                         (FairNeg, dict(bpr_on_sigmoid=True))])
def test_fused_training_equals_autograd_training(tmp_path, cls, kwargs):
    # 3 batches per Lightning step over 5 batches per epoch: runs of 3 and of 2 (the short last batch alone).
    dm_kwargs = dict(batch_size=27, batches_per_step=3) | (dict(num_negatives=3) if cls is DNS else {})
    dm = datamodule(make_data(tmp_path), **dm_kwargs)
    plain = fit(tmp_path / "plain", dm, cls, double=True, **kwargs)
    fused = fit(tmp_path / "fused", dm, cls, double=True, fused_step=True, **kwargs)
    assert fused.trainer.global_step == plain.trainer.global_step >= 8
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[name], value, rtol=1e-9, atol=1e-9, msg=name)
    opt_plain, opt_fused = plain.optimizers().optimizer, fused.optimizers().optimizer
    for p_plain, p_fused in zip(plain.parameters(), fused.parameters()):
        assert float(opt_fused.state[p_fused]["step"]) == fused.trainer.global_step
        torch.testing.assert_close(opt_fused.state[p_fused]["exp_avg_sq"], opt_plain.state[p_plain]["exp_avg_sq"],
                                   rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize("cls, kwargs", [
    (FairDual, {}), (FairDual, dict(preset="fairdiverse", bpr_on_sigmoid=True, reg_weight=0.01)), (SDRO, {})])
def test_fused_weighted_training_equals_autograd_training(tmp_path, cls, kwargs):
    # The sample weights (FairDual: from μ, whose dual step reads the batch's user vectors) and the method state
    # they update follow the same trajectory; 2 batches per Lightning step.
    dm = fairdual_data.datamodule(fairdual_data.make_data(tmp_path), batch_size=16, batches_per_step=2)
    models = []
    for fused in (False, True):
        L.seed_everything(0)
        args = dict(num_users=dm.num_users, num_items=dm.num_items, num_item_groups=dm.num_item_groups, ks=[5],
                    fused_step=fused)
        if cls is FairDual:
            args |= dict(num_samples=20, topk=5, beta=3, eta=0.05, lam=0.5)
        m = cls(lambda u, i: MF(u, i, dim=8, init_std=0.1), **(args | kwargs)).double()
        fairdual_data.trainer(tmp_path / str(fused), max_epochs=2, precision="64-true").fit(m, dm)
        models.append(m)
    plain, fused = models
    assert fused.trainer.global_step == plain.trainer.global_step >= 4
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[name], value, rtol=1e-9, atol=1e-9, msg=name)


class PerBatchFairDual(FairDual):
    """FairDual's per-batch fused path (the one DDP takes) instead of its `ops.fairdual_bpr_adam_step` runs."""

    def fused_weighted_steps(self, adam, parts):
        return WeightedLoss.fused_weighted_steps(self, adam, parts)


@pytest.mark.parametrize("kwargs", [{}, dict(preset="fairdiverse", bpr_on_sigmoid=True, reg_weight=0.01),
                                    dict(signal="utility", frozen=False, reset="epoch", target="constant",
                                         metric="euclid", s_min=0.9)])
def test_fairdual_runs_equal_its_per_batch_steps(tmp_path, monkeypatch, kwargs):
    """One op call per run of batches trains and logs what the per-batch path does, bit for bit: 5 batches per
    Lightning step, a frozen-tower refresh every 4 batches, logging every 3, a short last batch."""
    dm = fairdual_data.datamodule(fairdual_data.make_data(tmp_path), batch_size=16, batches_per_step=5)
    run_lengths, op = [], ops.fairdual_bpr_adam_step

    def counted(*args, **kw):
        run_lengths.append(len(args[8]))
        return op(*args, **kw)

    monkeypatch.setattr(ops, "fairdual_bpr_adam_step", counted)
    models, logged = [], []
    for cls in (PerBatchFairDual, FairDual):
        L.seed_everything(0)
        m = cls(lambda u, i: MF(u, i, dim=8, init_std=0.1), num_users=dm.num_users, num_items=dm.num_items,
                num_item_groups=dm.num_item_groups, ks=[5], num_samples=20, topk=5, beta=4, eta=0.05, lam=0.5,
                fused_step=True, **kwargs)
        logger = CSVLogger(tmp_path, name=cls.__name__, version=0)
        fairdual_data.trainer(tmp_path / cls.__name__, max_epochs=2, log_every_n_steps=3, logger=logger).fit(m, dm)
        models.append(m)
        with open(tmp_path / cls.__name__ / "version_0" / "metrics.csv") as f:
            logged.append([{k: v for k, v in row.items() if v} for row in csv.DictReader(f)])
    per_batch, runs = models
    assert runs.trainer.global_step == per_batch.trainer.global_step == int(runs.batch_counter) >= 20
    assert sum(run_lengths) == runs.trainer.global_step and max(run_lengths) >= 2
    for name, value in per_batch.state_dict().items():
        assert torch.equal(runs.state_dict()[name], value), name
    assert logged[1] == logged[0] and sum("dual/mu_min" in row for row in logged[0]) >= 6
    assert sum("dual/s_mean" in row for row in logged[0]) >= 6


def test_fused_training_logs_the_loss_at_the_same_steps(tmp_path):
    dm = datamodule(make_data(tmp_path), batch_size=16, batches_per_step=3)
    logged = []
    for fused in (False, True):
        L.seed_everything(0)
        logger = CSVLogger(tmp_path, name=str(fused), version=0)
        trainer(tmp_path, max_epochs=2, log_every_n_steps=2, logger=logger, precision="64-true").fit(
            module(dm, FairNeg, fused_step=fused).double(), dm)
        with open(tmp_path / str(fused) / "version_0" / "metrics.csv") as f:
            logged.append({int(r["step"]): float(r["train/loss"]) for r in csv.DictReader(f) if r["train/loss"]})
    plain, fused = logged
    assert sorted(fused) == sorted(plain) and len(plain) >= 3
    for step, value in plain.items():
        assert fused[step] == pytest.approx(value, rel=1e-9)


def test_fused_float32_training_stays_close(tmp_path):
    dm = datamodule(make_data(tmp_path), batch_size=16)
    plain, fused = fit(tmp_path / "a", dm, FairNeg), fit(tmp_path / "b", dm, FairNeg, fused_step=True)
    for name, value in plain.state_dict().items():
        torch.testing.assert_close(fused.state_dict()[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_resume_continues_identically(tmp_path):
    dm = datamodule(make_data(tmp_path), batch_size=16, batches_per_step=2)
    straight = fit(tmp_path / "a", dm, FairNeg, epochs=3, fused_step=True)
    L.seed_everything(0)
    first = module(dm, FairNeg, fused_step=True)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    trainer(tmp_path / "b", max_epochs=2, enable_checkpointing=True, callbacks=[ckpt]).fit(first, dm)
    resumed = module(dm, FairNeg, fused_step=True)
    trainer(tmp_path / "c", max_epochs=3).fit(resumed, dm, ckpt_path=str(tmp_path / "ck" / "last.ckpt"))
    for name, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("make, match", [
    (lambda dm: BPR(lambda u, i: LightGCN(u, i, dim=8), num_users=dm.num_users, num_items=dm.num_items,
                    fused_step=True), "the backbone is LightGCN, not MF"),
    (lambda dm: module(dm, MeanScoreReg, fused_step=True), "MeanScoreReg changes BPR's loss"),
    (lambda dm: module(dm, DPR, fused_step=True), "DPR: it has its own training_step"),
    (lambda dm: module(dm, DRO, fused_step=True, reg_weight=0.0), "DRO changes the weighted-mean objective"),
    (lambda dm: FairDual(lambda u, i: MF(u, i, dim=8), num_users=dm.num_users, num_items=dm.num_items,
                         num_item_groups=dm.num_item_groups, num_samples=5, topk=2, loss="ce", fused_step=True),
     "loss='ce' is not BPR"),
])
def test_unsupported_models_are_refused(tmp_path, make, match):
    dm = datamodule(make_data(tmp_path), item_group_genres=["Sci-Fi", "Horror"])
    with pytest.raises(ValueError, match=f"fused_step=True cannot train .*{match}"):
        trainer(tmp_path, fast_dev_run=True).fit(make(dm), dm)


def test_half_precision_is_refused(tmp_path):
    dm = datamodule(make_data(tmp_path))
    with pytest.raises(ValueError, match="precision bf16-mixed is not full precision"):
        trainer(tmp_path, fast_dev_run=True, precision="bf16-mixed").fit(module(dm, BPR, fused_step=True), dm)

