"""DPR: the adversary's loss and the score-distribution term against NumPy, its phases, and its errors."""
import numpy as np
import pytest
import torch
from test_fairneg_method import datamodule, make_data, module, trainer

from fairlit.methods import BPR, DPR


@pytest.fixture
def dm(tmp_path):
    return datamodule(make_data(tmp_path))          # 3 exclusive genres


def numpy_adversary_loss(m: DPR, scores: np.ndarray, groups: np.ndarray) -> float:
    h = scores[:, None]
    layers = [layer for layer in m.adversary if isinstance(layer, torch.nn.Linear)]
    for i, layer in enumerate(layers):
        h = h @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()
        if i < len(layers) - 1:
            h = np.maximum(h, 0)
    pred = 1 / (1 + np.exp(-h))
    err = ((pred - np.eye(pred.shape[1])[groups]) ** 2).sum(1)
    return sum(err[groups == g].mean() for g in np.unique(groups))       # w_i = 1 / N_g(i)


def test_adversary_loss_matches_numpy(dm):
    m = module(dm, DPR, adv_hidden=[5, 4]).double()
    scores = torch.tensor([0.3, -1.2, 2.0, 0.0, 0.7], dtype=torch.float64)
    groups = torch.tensor([0, 0, 2, 2, 2])                             # group 1 absent from the batch
    want = numpy_adversary_loss(m, scores.numpy(), groups.numpy())
    assert m.adversary_loss(scores, groups).item() == pytest.approx(want, rel=1e-12)


def test_score_distribution_penalty_matches_numpy(dm):
    m = module(dm, DPR).double()
    batch = {"user": torch.tensor([0, 3, 5])}
    user, items = m.encode(batch)
    s = (user @ items.T).detach().numpy()
    mu, sigma = s.mean(1), s.std(1)
    want = 0.5 * (mu**2 + sigma**2 - 2 * np.log(sigma) - 1).mean()
    assert m.score_distribution_penalty(batch).item() == pytest.approx(want, rel=1e-10)


def test_adversary_only_trains_after_pretraining(tmp_path, dm):
    m = module(dm, DPR, pretrain_epochs=1)
    before = [p.detach().clone() for p in m.adversary.parameters()]
    trainer(tmp_path, max_epochs=1).fit(m, dm)
    assert all(torch.equal(a, b) for a, b in zip(before, m.adversary.parameters()))
    m2 = module(dm, DPR, pretrain_epochs=0)
    start = [p.detach().clone() for p in m2.adversary.parameters()]
    trainer(tmp_path, max_epochs=1).fit(m2, dm)
    assert not all(torch.equal(a, b) for a, b in zip(start, m2.adversary.parameters()))


def test_pretraining_epochs_are_plain_bpr(tmp_path, dm):
    # Before the adversarial phase DPR's recommender follows BPR exactly (same seed, same data).
    torch.manual_seed(0)
    dpr = module(dm, DPR, pretrain_epochs=5)
    torch.manual_seed(0)
    bpr = module(dm, BPR)
    for m in (dpr, bpr):
        trainer(tmp_path, max_epochs=2).fit(m, dm)
    for a, b in zip(dpr.backbone.parameters(), bpr.backbone.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("kwargs, message", [
    (dict(alpha_adv=-1.0), "alpha_adv must be a finite number >= 0"),
    (dict(reg_s=float("nan")), "reg_s must be a finite number >= 0, got nan"),
    (dict(adv_lr=0.0), r"adv_lr must be a finite number > 0"),
    (dict(adv_steps=0), "adv_steps must be >= 1"),
    (dict(num_item_groups=1), "at least 2 item groups"),
])
def test_bad_configuration(dm, kwargs, message):
    with pytest.raises(ValueError, match=message):
        module(dm, DPR, **kwargs)
