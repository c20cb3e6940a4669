"""FairDual module: FairDiverse two-step trace, bad input, NaN safety, bit-identical resume, DDP parity."""
import csv
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from scipy.optimize import minimize
from toy_data import write_toy_dataset

from fairlit.data import RecDataModule
from fairlit.methods import FairDual
from fairlit.methods.weighted import Forward, ItemGroupTable
from fairlit.models import MF
from tests.conftest import ReleaseProcessGroup

GENRES = ("Action", "Comedy", "Drama", "Horror")


def make_data(root: Path, num_users: int = 24, num_items: int = 30, per_user: int = 12, seed: int = 0) -> Path:
    """Every user rates ``per_user`` random items (all positives), 1-2 genres per item."""
    return write_toy_dataset(root, num_users, num_items, per_user, seed,
                             lambda rng, i: " ".join(rng.choice(GENRES, rng.integers(1, 3), replace=False)))


def datamodule(folder: Path, batch_size: int = 32, batches_per_step: int = 1) -> RecDataModule:
    return RecDataModule(dataset=str(folder), split="chrono", item_group="genre_first", batch_size=batch_size,
                         batches_per_step=batches_per_step, eval_batch_size=64, seed=3)


def module(dm: RecDataModule, **kwargs) -> FairDual:
    args = dict(num_users=dm.num_users, num_items=dm.num_items, num_item_groups=dm.num_item_groups, ks=[5],
                num_samples=20, topk=5, beta=3, eta=0.05, lam=0.5)
    return FairDual(lambda u, i: MF(u, i, dim=8, init_std=0.1), **(args | kwargs))


def trainer(root: Path, **kwargs) -> L.Trainer:
    args = dict(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, deterministic=True, limit_val_batches=0,
                default_root_dir=str(root))
    return L.Trainer(**(args | kwargs))


def losses_not_read():
    raise AssertionError("FairDual's weights read only the towers: fused_step training must not score the batch")


# ----------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(lam=-0.1), "lam"), (dict(eta=0.0), "eta"), (dict(num_samples=31), "num_samples"),
    (dict(topk=21), "topk"), (dict(preset="paper"), "preset"), (dict(signal="x"), "signal"),
    (dict(alpha=0.0), "alpha"), (dict(num_item_groups=0), "item groups"), (dict(num_train_rows=0), "num_train_rows"),
    (dict(lam=float("nan")), "lam"), (dict(eta=float("nan")), "eta"), (dict(mu_init=float("nan")), "mu_init"),
    (dict(s_min=-5.0), "s_min"), (dict(reg_weight=-3.0), "reg_weight")])
def test_bad_configuration(tmp_path, kwargs, match):
    dm = datamodule(make_data(tmp_path))
    with pytest.raises(ValueError, match=match):
        module(dm, **kwargs)


def test_item_without_group_and_empty_group():
    with pytest.raises(ValueError, match="no group"):
        ItemGroupTable(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1]), torch.ones(2), 2)
    with pytest.raises(ValueError, match="have no items"):
        ItemGroupTable(torch.tensor([0, 1, 2]), torch.tensor([0, 0]), torch.ones(2), 2)


def test_num_groups_larger_than_data_fails_at_setup(tmp_path):
    dm = datamodule(make_data(tmp_path))
    model = module(dm, num_item_groups=dm.num_item_groups + 1)
    with pytest.raises(ValueError, match="item groups"):
        trainer(tmp_path, max_steps=1).fit(model, datamodule=dm)


# ----------------------------------------------------------------------------------------- trace
def project_prefix_qp(tilde: np.ndarray, lam: float) -> np.ndarray:
    """FairDiverse's cvxpy model (ρ = 1): min ‖x − μ̃‖² s.t. prefix sums of x, in ascending order of μ̃, ≥ −λ."""
    order = np.argsort(tilde)
    t = tilde[order]
    cons = [{"type": "ineq", "fun": lambda x, k=k: x[:k].sum() + lam} for k in range(1, len(t) + 1)]
    x = minimize(lambda x: ((x - t) ** 2).sum(), t, constraints=cons, method="SLSQP",
                 options={"ftol": 1e-14, "maxiter": 1000}).x
    out = np.empty_like(x)
    out[order] = x
    return out


def test_fairdiverse_preset_matches_hand_computed_two_step_trace():
    """Re-do FairDiverse's FairDual.py arithmetic (spec §10) in numpy for two batches and compare."""
    num_items, groups, k, q, n_rows, eta, lam, alpha = 12, 3, 2, 6, 40, 12.0, 0.3, 0.2
    item_group = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 0, 1])
    model = FairDual(lambda u, i: MF(u, i, dim=4, init_std=0.5), num_users=5, num_items=num_items,
                     num_item_groups=groups, preset="fairdiverse", num_samples=q, topk=k, eta=eta, lam=lam,
                     alpha=alpha, num_train_rows=n_rows)
    model.set_item_groups(torch.arange(num_items + 1), item_group, torch.ones(num_items))
    model.on_train_epoch_start()
    onehot = np.eye(groups)[item_group.numpy()]                                   # M [I, G]
    mu, c_t, prev = np.ones(groups), k * n_rows * np.ones(groups), np.zeros(groups)
    projected = False
    for t, users in enumerate([torch.tensor([0, 1, 2]), torch.tensor([3, 4, 0, 2])]):
        user_vecs, item_vecs = model.backbone.encode(users)
        batch = {"user": users, "pos": torch.zeros_like(users)}
        out = Forward(user_vecs, item_vecs, losses_not_read)
        weights = model.sample_weights(batch, out).detach().numpy()
        sampled = torch.randperm(num_items, generator=torch.Generator().manual_seed(t))[:q].numpy()
        scores = user_vecs.detach().numpy() @ item_vecs.detach().numpy()[sampled].T
        top = sampled[np.argsort(-scores, axis=1, kind="stable")[:, :k]]
        b_t = onehot[top].sum(1)                                                  # [B, G]
        bw = (b_t * mu).mean(1)
        expected_w = 1 - bw / bw.sum()
        d_t = b_t.sum(0)
        c_t = c_t - d_t
        grad = -d_t / (len(users) * k) + c_t / (n_rows * k)
        grad = alpha * grad + (1 - alpha) * prev
        prev = grad
        tilde = mu - eta * grad
        mu = project_prefix_qp(tilde, lam)
        projected |= bool(np.abs(mu - tilde).max() > 1e-6)
        np.testing.assert_allclose(weights, expected_w, rtol=1e-5)
        np.testing.assert_allclose(model.mu.numpy(), mu, atol=1e-6)
        np.testing.assert_allclose(model.gmom.numpy(), prev, atol=1e-12)
    assert projected, "the trace should exercise the projection"


def test_num_train_rows_defaults_to_the_data_and_an_explicit_value_is_kept(tmp_path):
    dm = datamodule(make_data(tmp_path))
    for given, expected in ((None, len(dm.train_users)), (5 * len(dm.train_users), 5 * len(dm.train_users))):
        model = module(dm, num_train_rows=given)
        trainer(tmp_path, max_steps=1).fit(model, datamodule=dm)
        assert model.num_train_rows == expected


def test_dual_diagnostics_reach_the_logger(tmp_path):
    from lightning.pytorch.loggers import CSVLogger

    dm = datamodule(make_data(tmp_path), batch_size=16)
    m = module(dm)
    trainer(tmp_path, log_every_n_steps=1, logger=CSVLogger(tmp_path, name="log", version=0)).fit(m, dm)
    with open(tmp_path / "log" / "version_0" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["dual/mu_min"]]
    assert len(rows) == m.trainer.global_step                      # one row per step at log_every_n_steps=1
    np.testing.assert_allclose([float(rows[-1]["dual/mu_min"]), float(rows[-1]["dual/mu_max"])],
                               [float(m.mu.min()), float(m.mu.max())], rtol=1e-6)


def test_no_nan_when_weights_vanish():
    model = FairDual(lambda u, i: MF(u, i, dim=4), num_users=3, num_items=6, num_item_groups=2, num_samples=6,
                     topk=2, weight_mode="topk_exposure", mu_init=0.0)
    model.set_item_groups(torch.arange(7), torch.tensor([0, 1, 0, 1, 0, 1]), torch.ones(6))
    model.num_train_rows = 10
    model.on_train_epoch_start()
    users = torch.tensor([0, 1])
    u, i = model.backbone.encode(users)
    out = Forward(u, i, losses_not_read)
    weights = model.sample_weights({"user": users, "pos": torch.tensor([0, 1])}, out)  # Σ bw = 0 (μ = 0)
    assert torch.isfinite(weights).all() and torch.isfinite(model.mu).all()
    model.hparams.weight_mode = "target_group"
    model.opts["weight_mode"] = "target_group"
    model.mu.fill_(5.0)  # s = 1 − 5 < 0: clamped to 0, the loss is 0, not NaN
    weights = model.sample_weights({"user": users, "pos": torch.tensor([0, 1])}, out)
    assert torch.equal(weights, torch.zeros(2))


# ----------------------------------------------------------------------------------------- Lightning
def state(model: FairDual) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_continues_bit_identically(tmp_path):
    folder = make_data(tmp_path)
    torch.manual_seed(0)
    straight = module(datamodule(folder))
    trainer(tmp_path, max_epochs=2).fit(straight, datamodule=datamodule(folder))

    torch.manual_seed(0)
    first = module(datamodule(folder))
    t1 = trainer(tmp_path, max_epochs=1)
    t1.fit(first, datamodule=datamodule(folder))
    ckpt = tmp_path / "epoch1.ckpt"
    t1.save_checkpoint(ckpt)
    torch.manual_seed(123)  # the resumed run must not depend on the fresh module's initialisation
    resumed = module(datamodule(folder))
    trainer(tmp_path, max_epochs=2).fit(resumed, datamodule=datamodule(folder), ckpt_path=str(ckpt))

    a, b = state(straight), state(resumed)
    assert a.keys() == b.keys() and int(a["batch_counter"]) > straight.hparams.beta
    for key in a:
        assert torch.equal(a[key], b[key]), key


class StepHook(L.Callback):
    """Overrides a step hook, so RecModule.optimizer_update takes Lightning's wrapped backward and step."""

    def __init__(self):
        self.calls = 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.calls += 1


def test_several_batches_per_step_and_wrapped_steps_train_exactly_as_one_batch_per_step(tmp_path):
    folder = make_data(tmp_path)
    runs = {}
    for name, per_step, callbacks in (("plain", 1, []), ("chunked", 3, []), ("wrapped", 3, [StepHook()])):
        torch.manual_seed(0)
        model = module(datamodule(folder, batch_size=8))
        fit = trainer(tmp_path, max_epochs=2, callbacks=callbacks)
        fit.fit(model, datamodule=datamodule(folder, batch_size=8, batches_per_step=per_step))
        runs[name] = (state(model), fit.global_step, model._direct)
    steps = int(runs["plain"][0]["batch_counter"])
    assert steps > 3 * model.hparams.beta and steps % 3 != 0  # several refreshes, a short last fetch
    assert [run[1] for run in runs.values()] == [steps] * 3  # Lightning counts optimizer steps
    assert [run[2] for run in runs.values()] == [True, True, False]
    assert callbacks[0].calls == steps
    for name in ("chunked", "wrapped"):
        for key, value in runs["plain"][0].items():
            assert torch.equal(value, runs[name][0][key]), (name, key)


@pytest.mark.parametrize("per_step", [1, 2])
def test_ddp_two_processes_equal_one_process_on_same_global_batches(tmp_path, per_step):
    folder = make_data(tmp_path, num_users=32, per_user=16)
    steps = 4  # full global batches only: ddp's sampler pads the last one
    torch.manual_seed(0)
    single = module(datamodule(folder, batch_size=32), beta=2)
    trainer(tmp_path, limit_train_batches=steps).fit(single, datamodule=datamodule(folder, batch_size=32))
    torch.manual_seed(0)
    ddp = module(datamodule(folder, batch_size=16), beta=2)
    trainer(tmp_path, limit_train_batches=steps // per_step, devices=2, strategy="ddp_spawn",
            callbacks=[ReleaseProcessGroup()]).fit(
        ddp, datamodule=datamodule(folder, batch_size=16, batches_per_step=per_step))
    assert int(ddp.batch_counter) == int(single.batch_counter) == steps
    assert not torch.equal(single.mu, torch.zeros_like(single.mu))
    for key in ("mu", "gmom", "gamma"):
        torch.testing.assert_close(getattr(ddp, key), getattr(single, key), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ddp.backbone.item_embedding.weight, single.backbone.item_embedding.weight,
                               atol=1e-5, rtol=1e-4)


def test_small_genres_merge_into_one_group():
    """FairDual App. I: genres with < min_size items become one "infrequent" group; Â rows still sum to 1."""
    from fairlit.data.groups import genre_multi, merge_small_groups

    genres = [("A",), ("A", "B"), ("B", "C"), ("C", "A"), ("A",), ("D", "C")]  # sizes A4 B2 C3 D1
    indptr, indices, weights, names = merge_small_groups(*genre_multi(genres), min_size=3)
    assert names == ["A", "C", "infrequent"]
    rows = [dict(zip(indices[a:b].tolist(), weights[a:b].tolist())) for a, b in zip(indptr[:-1], indptr[1:])]
    assert rows == [{0: 1.0}, {0: 0.5, 2: 0.5}, {2: 0.5, 1: 0.5}, {1: 0.5, 0: 0.5}, {0: 1.0}, {2: 0.5, 1: 0.5}]
