"""FairNeg's pure functions: mixup vs a loop oracle, chi-square of the draws, momentum by hand."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from fairlit.methods._fairneg_sampler import (code_momentum_step, csr_row_mask, draw_inverse_cdf,
                                              gbce_group_sums, mixup_probs, momentum_step)


def oracle_probs(scores, mask, group, p, w_fair, tau, imp_score):
    """Eqs. 6-8 for one user at a time with Python loops (the spec's §2.5 text, not its vector form)."""
    out = np.zeros(scores.shape)
    for b in range(scores.shape[0]):
        cand = [j for j in range(scores.shape[1]) if not mask[b, j]]
        n_ua = {a: sum(group[j] == a for j in cand) for a in range(len(p))}
        mass = sum(p[a] for a in n_ua if n_ua[a] > 0)
        phi = {j: 1 / (1 + math.exp(-scores[b, j])) if imp_score == "sigmoid" else scores[b, j]
               for j in cand}
        z = sum(math.exp(phi[j] / tau) for j in cand)
        for j in cand:
            fair = p[group[j]] / mass / n_ua[group[j]]
            out[b, j] = w_fair * fair + (1 - w_fair) * math.exp(phi[j] / tau) / z
    return out


def case(seed=0, batch=4, num_items=13, groups=3):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, num_items, generator=gen) * 3
    mask = torch.rand(batch, num_items, generator=gen) < 0.3
    group = torch.randint(groups, (num_items,), generator=gen)
    group[:groups] = torch.arange(groups)
    mask[0, group == 1] = True                       # user 0 has no candidate in group 1
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)[:groups]
    n_ua = torch.stack([((~mask) & (group == a)).sum(1) for a in range(groups)], 1)
    return scores, mask, group, p, n_ua


@pytest.mark.parametrize("w_fair", [0.0, 0.6, 1.0])
@pytest.mark.parametrize("imp_score", ["sigmoid", "logit"])
def test_mixup_matches_loop_oracle(w_fair, imp_score):
    scores, mask, group, p, n_ua = case()
    got = mixup_probs(scores, mask, group, p, n_ua, w_fair, 0.4, imp_score)
    want = oracle_probs(scores.double().numpy(), mask.numpy(), group.numpy(), p.numpy(), w_fair, 0.4,
                        imp_score)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-7)
    assert torch.allclose(got.sum(1), torch.ones(len(got)), atol=1e-6)
    assert (got[mask] == 0).all()


def test_fair_part_gives_group_masses_p():
    scores, mask, group, p, n_ua = case(seed=1)
    got = mixup_probs(None, mask, group, p, n_ua, 1.0)
    masses = torch.stack([got[:, group == a].sum(1) for a in range(3)], 1)
    full = (n_ua > 0).all(1)
    torch.testing.assert_close(masses[full].double(), p.expand(int(full.sum()), -1), atol=1e-6, rtol=0)
    assert masses[0, 1] == 0 and torch.isclose(masses[0].sum(), torch.tensor(1.0))  # renormalised, §2.5


def test_csr_row_mask():
    indptr, indices = torch.tensor([0, 2, 2, 5]), torch.tensor([1, 3, 0, 2, 4])
    mask = csr_row_mask(indptr, indices, torch.tensor([2, 0, 1]), 5)
    assert mask.tolist() == [[True, False, True, False, True], [False, True, False, True, False], [False] * 5]


def test_draws_follow_intended_probabilities_chi_square():
    """2e5 draws per user against the oracle probabilities (not the function under test)."""
    scores, mask, group, p, n_ua = case(seed=2, batch=3)
    probs = mixup_probs(scores, mask, group, p, n_ua, 0.6)
    intended = oracle_probs(scores.double().numpy(), mask.numpy(), group.numpy(), p.numpy(), 0.6, 0.4,
                            "sigmoid")
    draws = 200_000
    rows = torch.arange(3).repeat_interleave(draws)
    neg = draw_inverse_cdf(probs[rows], torch.rand(len(rows), generator=torch.Generator().manual_seed(5),
                                                        dtype=torch.float64))
    for b in range(3):
        counts = np.bincount(neg[rows == b].numpy(), minlength=probs.shape[1])
        allowed = ~mask[b].numpy()
        assert counts[~allowed].sum() == 0                               # never a training positive
        stat = chisquare(counts[allowed], intended[b, allowed] / intended[b, allowed].sum() * draws)
        assert stat.pvalue > 1e-3, (b, stat)


def test_draw_edges_never_return_zero_mass():
    probs = torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.2, 0.0, 0.0, 0.8]])
    u = torch.tensor([1 - 1e-17, 0.0], dtype=torch.float64)
    assert draw_inverse_cdf(probs, u).tolist() == [2, 0]
    u = torch.tensor([0.9999999999999999, 0.2], dtype=torch.float64)
    assert draw_inverse_cdf(probs, u).tolist() == [2, 3]


def test_momentum_step_by_hand():
    p, v = torch.tensor([0.7, 0.3], dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    # Step 1: ∇ = L - mean(L) = [-0.2, 0.2]; v = 0.1·0 + 0.1·∇ = [-0.02, 0.02]; p = p - v = [0.72, 0.28].
    p, v, clamped = momentum_step(p, v, torch.tensor([0.5, 0.9], dtype=torch.float64), gamma=0.1, alpha=0.1)
    torch.testing.assert_close(v, torch.tensor([-0.02, 0.02], dtype=torch.float64))
    torch.testing.assert_close(p, torch.tensor([0.72, 0.28], dtype=torch.float64))
    assert not clamped
    # Step 2: ∇ = [0.1, -0.1]; v = 0.1·[-0.02, 0.02] + 0.1·[0.1, -0.1] = [0.008, -0.008]; p = [0.712, 0.288].
    p, v, _ = momentum_step(p, v, torch.tensor([0.7, 0.5], dtype=torch.float64), gamma=0.1, alpha=0.1)
    torch.testing.assert_close(v, torch.tensor([0.008, -0.008], dtype=torch.float64))
    torch.testing.assert_close(p, torch.tensor([0.712, 0.288], dtype=torch.float64))
    # Equal losses leave p unchanged when v = 0.
    zero = torch.zeros(2, dtype=torch.float64)
    q, _, _ = momentum_step(p, zero, torch.full((2,), 0.3, dtype=torch.float64), 0.1, 0.1)
    torch.testing.assert_close(q, p)


def test_momentum_projection_clamps_and_renormalises():
    p, v = torch.tensor([0.05, 0.45, 0.5], dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    # ∇ = [1, -0.5, -0.5]; v = [0.1, -0.05, -0.05]; raw p = [-0.05, 0.5, 0.55] -> floor 0.01 -> / 1.06.
    loss = torch.tensor([2.0, 0.5, 0.5], dtype=torch.float64)
    p, _, clamped = momentum_step(p, v, loss, 0.1, 0.1, p_min=0.01)
    torch.testing.assert_close(p, torch.tensor([0.01, 0.5, 0.55], dtype=torch.float64) / 1.06)
    assert clamped


def test_code_momentum_step_by_hand():
    p = torch.tensor([0.45, 0.55], dtype=torch.float64)
    # First step: p - 0.2·g0 with g0 = [-0.1, 0.1] -> [0.47, 0.53].
    zero = torch.zeros(2, dtype=torch.float64)
    p, g, _ = code_momentum_step(p, zero, torch.tensor([0.6, 0.8]).double(), 0.2, True)
    torch.testing.assert_close(p, torch.tensor([0.47, 0.53], dtype=torch.float64))
    # Second: p - 0.2·(0.9·g0 + 0.1·g1), g1 = [0.2, -0.2]: step = [-0.07, 0.07] -> [0.484, 0.516].
    p, g, _ = code_momentum_step(p, g, torch.tensor([0.9, 0.5]).double(), 0.2, False)
    torch.testing.assert_close(p, torch.tensor([0.484, 0.516], dtype=torch.float64))
    torch.testing.assert_close(g, torch.tensor([0.2, -0.2], dtype=torch.float64))


def test_gbce_group_sums_matches_loop():
    gen = torch.Generator().manual_seed(3)
    user_vecs, item_vecs = torch.randn(5, 4, generator=gen), torch.randn(7, 4, generator=gen)
    users, items = torch.randint(5, (40,), generator=gen), torch.randint(7, (40,), generator=gen)
    group = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    sums, counts = gbce_group_sums(user_vecs, item_vecs, users, items, group, 3, chunk=16)
    for a in range(3):
        sel = group[items] == a
        want = [-math.log(1 / (1 + math.exp(-float(user_vecs[u] @ item_vecs[i]))))
                for u, i in zip(users[sel].tolist(), items[sel].tolist())]
        assert counts[a] == len(want) and math.isclose(float(sums[a]), sum(want), rel_tol=1e-5)
