"""FairDual's reweighting/regularising baselines (spec §5): weight formulas against hand computations, and
every method trains on toy data (BPR-MF and CE on GRU4Rec)."""
import math

import pytest
import torch
from test_fairdual_method import datamodule, make_data, trainer

from fairlit.data import RecDataModule
from fairlit.methods import DRO, FOCF, SDRO, UNI, FairDual, GroupVarReg, IFairLRS, Maxmin, Prop
from fairlit.methods.weighted import Forward
from fairlit.models import MF, GRU4Rec

GROUP = torch.tensor([0, 0, 1, 1, 2, 0])  # item -> group, 6 items, 3 groups


def build(cls, **kwargs):
    model = cls(lambda u, i: MF(u, i, dim=4), num_users=4, num_items=6, num_item_groups=3, **kwargs)
    model.set_item_groups(torch.arange(7), GROUP, torch.ones(6))
    return model


def forward(loss, pos_score=None):
    n = len(loss)
    return Forward(torch.zeros(n, 4), torch.zeros(6, 4),
                   lambda: (torch.tensor(loss), torch.zeros(n) if pos_score is None else torch.tensor(pos_score)))


POS = torch.tensor([0, 1, 2, 4])  # groups 0, 0, 1, 2
LOSS = [1.0, 3.0, 0.5, 2.5]       # L_g = sum / (n_g + 0.1): 4/2.1, 0.5/1.1, 2.5/1.1


def test_dro_worst_group_is_the_max_group_loss():
    model = build(DRO)
    out = forward(LOSS)
    expected = max(4 / 2.1, 0.5 / 1.1, 2.5 / 1.1)                    # group 2
    assert math.isclose(float(model.objective({"pos": POS}, out)), expected, rel_tol=1e-6)


def test_dro_chi2_has_a_learnable_dual():
    model = build(DRO, mode="chi2", chi2_radius=0.5)
    loss = torch.tensor(LOSS, requires_grad=True)
    value = model.objective({"pos": POS}, Forward(None, None, lambda: (loss, None)))
    value.backward()
    assert torch.isclose(value, math.sqrt(2) * torch.tensor(LOSS).pow(2).mean().sqrt())  # η = 0
    assert model.dro_eta.grad is not None


def test_maxmin_weights():
    weights = build(Maxmin, p=0.1).sample_weights({"pos": POS}, forward(LOSS))
    torch.testing.assert_close(weights, torch.tensor([0.1, 0.1, 0.1, 0.9]))


def test_maxmin_resample_tracks_the_worst_group_and_leaves_the_loss_unweighted():
    model = build(Maxmin, mode="resample")
    assert int(model.worst_group) == -1
    assert model.sample_weights({"pos": POS}, forward(LOSS)) is None
    assert int(model.worst_group) == 2                                # L = (4/2.1, 0.5/1.1, 2.5/1.1)


def test_maxmin_group_training_rows_lists_every_member():
    model = build(Maxmin, mode="resample")
    # Items 0 and 3 also belong to group 2 (multi-group rows of Â).
    model.set_item_groups(torch.tensor([0, 2, 3, 4, 6, 7, 8]), torch.tensor([0, 2, 0, 1, 1, 2, 2, 0]),
                              torch.tensor([0.5, 0.5, 1, 1, 0.5, 0.5, 1, 1]))
    items = torch.tensor([3, 0, 5, 2, 4, 1, 3])
    indptr, rows = model.group_training_rows(items)
    groups_of = {0: {0, 2}, 1: {0}, 2: {1}, 3: {1, 2}, 4: {2}, 5: {0}}
    for g in range(3):
        assert set(rows[indptr[g]:indptr[g + 1]].tolist()) == {r for r, i in enumerate(items.tolist())
                                                               if g in groups_of[i]}


@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_maxmin_resample_replaces_rows_with_worst_group_rows(p):
    model = build(Maxmin, mode="resample", p=p)
    items = torch.tensor([0, 1, 2, 3, 4, 5, 4, 2])
    table = {"user": torch.arange(8) + 100, "pos": items, "neg": torch.arange(8).view(8, 1) + 200}
    model._group_rows = model.group_training_rows(items)
    batch = {"user": torch.zeros(400, dtype=torch.long), "pos": torch.zeros(400, dtype=torch.long),
             "neg": torch.zeros(400, 1, dtype=torch.long)}
    assert model.resample(batch, table) is batch                      # no worst group yet
    model.worst_group.fill_(2)                                         # group 2 = item 4 only (rows 4, 6)
    out = model.resample(batch, table)
    replaced = out["user"] != 0
    assert set(out["user"][replaced].tolist()) <= {104, 106}
    assert (GROUP[out["pos"][replaced]] == 2).all()
    assert torch.equal(out["neg"][replaced, 0] - 200, out["user"][replaced] - 100)  # whole rows move together
    share = replaced.float().mean().item()
    assert share == {0.0: 1.0, 1.0: 0.0}.get(p, share) and (p != 0.5 or 0.4 < share < 0.6)


def test_prop_group_loss_weights_have_mean_one_and_follow_the_loss():
    weights = build(Prop, eta=1.0).sample_weights({"pos": POS}, forward(LOSS))
    q = torch.exp(0.5 + 0.5 * torch.tensor([4 / 2.1, 4 / 2.1, 0.5 / 1.1, 2.5 / 1.1]))
    torch.testing.assert_close(weights, q / q.mean())


def test_prop_boundary_keeps_group_totals():
    weights = build(Prop, mode="boundary").sample_weights({"pos": POS}, forward(LOSS))
    torch.testing.assert_close(weights[:2].sum(), torch.tensor(2.0))
    torch.testing.assert_close(weights[2:], torch.ones(2))


@pytest.mark.parametrize("mode", ["streaming", "fairdiverse"])
def test_sdro_upweights_the_high_loss_group(mode):
    model = build(SDRO, mode=mode)
    model.on_train_epoch_start()
    weights = model.sample_weights({"pos": POS}, forward(LOSS))
    assert torch.isclose(model.q.sum(), torch.tensor(1.0, dtype=torch.float64))
    assert weights[3] > weights[0] > weights[2]                        # L: group 2 > 0 > 1
    torch.testing.assert_close(weights.mean(), torch.tensor(1.0))


def test_ifairlrs_inverse_popularity():
    model = build(IFairLRS)
    model.on_train_epoch_start()
    weights = model.sample_weights({"pos": POS}, forward(LOSS))
    pop = torch.tensor([0.5, 0.5, 0.25, 0.25])                         # group shares of the targets
    torch.testing.assert_close(weights, 1 / (pop / pop.mean() + 0.1))


def test_reg_and_focf_regularizers():
    scores = [1.0, 3.0, 0.0, 5.0]                                      # group means 2, 0, 5; overall 2.25
    reg = build(GroupVarReg, weight=1.0).regularizer({"pos": POS}, forward(LOSS, scores))
    assert math.isclose(float(reg), torch.tensor([2.0, 0.0, 5.0]).var(unbiased=False).item(), rel_tol=1e-6)
    focf = build(FOCF, weight=1.0).regularizer({"pos": POS}, forward(LOSS, scores))
    gaps = torch.tensor([0.25, 2.25, 2.75])
    expected = torch.where(gaps < 1, 0.5 * gaps ** 2, gaps - 0.5).sum()
    assert math.isclose(float(focf), float(expected), rel_tol=1e-6)
    ungrouped = build(GroupVarReg, weight=1.0, grouped=False).regularizer({"pos": POS}, forward(LOSS, scores))
    assert math.isclose(float(ungrouped), torch.tensor(scores).var(unbiased=False).item(), rel_tol=1e-6)


CLASSES = [(UNI, {}), (FairDual, dict(num_samples=10, topk=3, beta=2)), (DRO, {}), (DRO, dict(mode="chi2")),
           (SDRO, {}), (Prop, {}), (IFairLRS, {}), (Maxmin, {}), (Maxmin, dict(mode="resample", p=0.5)), (FOCF, {}), (GroupVarReg, {})]


@pytest.mark.parametrize("cls, kwargs", CLASSES, ids=[f"{c.__name__}-{k}" for c, k in CLASSES])
def test_every_method_trains_on_bpr_mf(tmp_path, cls, kwargs):
    dm = datamodule(make_data(tmp_path))
    model = cls(lambda u, i: MF(u, i, dim=8), num_users=dm.num_users, num_items=dm.num_items,
                num_item_groups=dm.num_item_groups, ks=[5], **kwargs)
    before = model.backbone.item_embedding.weight.detach().clone()
    trainer(tmp_path, max_steps=3).fit(model, datamodule=dm)
    assert not torch.equal(before, model.backbone.item_embedding.weight)
    assert torch.isfinite(model.backbone.item_embedding.weight).all()


@pytest.mark.parametrize("cls", [UNI, FairDual, SDRO])
def test_full_softmax_ce_on_gru4rec_with_multi_genre_groups(tmp_path, cls):
    dm = RecDataModule(dataset=str(make_data(tmp_path)), split="chrono", item_group="genre_multi",
                       history_length=3, batch_size=32, eval_batch_size=64)
    kwargs = dict(num_samples=10, topk=3) if cls is FairDual else {}
    model = cls(lambda u, i: GRU4Rec(u, i, dim=8, hidden_size=8), num_users=dm.num_users, num_items=dm.num_items,
                num_item_groups=dm.num_item_groups, ks=[5], loss="ce", **kwargs)
    trainer(tmp_path, max_steps=3, limit_val_batches=1).fit(model, datamodule=dm)
    assert model.groups.weight.shape[1] == 2                          # items carry up to two genres


def test_a_sequential_backbone_without_histories_names_history_length(tmp_path):
    dm = RecDataModule(dataset=str(make_data(tmp_path)), split="chrono", batch_size=32, eval_batch_size=64)
    model = UNI(lambda u, i: GRU4Rec(u, i, dim=8, hidden_size=8), num_users=dm.num_users, num_items=dm.num_items,
                ks=[5], loss="ce")
    with pytest.raises(ValueError, match=r"GRU4Rec reads each user's history: set data.history_length >= 1 \(got 0"):
        trainer(tmp_path, max_steps=1, limit_val_batches=1).fit(model, datamodule=dm)


@pytest.mark.parametrize("cls, kwargs, message", [
    (UNI, dict(reg_weight=-3.0), "reg_weight must be a finite number >= 0, got -3.0"),
    (UNI, dict(lr=0.0), "lr must be a finite number > 0"),
    (UNI, dict(weight_decay=float("nan")), "weight_decay must be a finite number >= 0, got nan"),
    (DRO, dict(chi2_radius=-1.0), "chi2_radius"),
    (SDRO, dict(ema=5.0), r"ema \(β_s\) must be a finite number in \[0, 1\], got 5.0"),
    (SDRO, dict(eta=-1.0), "eta"),
    (Prop, dict(beta=-3.0), r"beta \(β\) must be a finite number in \[0, 1\]"),
    (Prop, dict(eta=float("inf")), "eta"),
    (IFairLRS, dict(smoothing=-1.0), r"smoothing \(M\) must be a finite number >= 0"),
    (Maxmin, dict(p=1.5), "p must be a finite number in"),
    (FOCF, dict(weight=-2.0), "weight must be a finite number >= 0"),
])
def test_bad_hyper_parameters_are_refused_by_name(cls, kwargs, message):
    with pytest.raises(ValueError, match=message):
        build(cls, **kwargs)


def test_a_diverging_run_names_the_step_sizes_to_lower(tmp_path):
    dm = datamodule(make_data(tmp_path))
    model = Prop(lambda u, i: MF(u, i, dim=4), num_users=dm.num_users, num_items=dm.num_items,
                 num_item_groups=dm.num_item_groups, eta=1000.0)  # exp(η·L_g) overflows
    with pytest.raises(FloatingPointError, match=r"Prop: training loss is (nan|inf) at step 0; the run diverged: "
                                                 r"lower lr \(0.001\) or .*eta=1000.0, beta=0.5"):
        trainer(tmp_path, max_steps=2, log_every_n_steps=1).fit(model, datamodule=dm)
