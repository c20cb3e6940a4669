"""MF: dot-product scores, RecBole EmbLoss regularisation, initialisation, sparse gradients."""

import math

import pytest
import torch

from fairlit.models import MF


def test_encode_dot_equals_elementwise_product_sum():
    torch.manual_seed(0)
    model = MF(5, 7, dim=4)
    users, items = torch.tensor([0, 3, 3, 4]), torch.tensor([6, 0, 2, 2])
    user_vecs, item_vecs = model.encode(users)
    P, Q = model.user_embedding.weight, model.item_embedding.weight
    torch.testing.assert_close((user_vecs * item_vecs[items]).sum(-1), (P[users] * Q[items]).sum(-1))
    torch.testing.assert_close(user_vecs @ item_vecs.T, P[users] @ Q.T)


def test_regularization_equals_hand_computation():
    torch.manual_seed(0)
    model = MF(5, 7, dim=3)
    users, pos, neg = torch.tensor([0, 1, 1]), torch.tensor([2, 3, 4]), torch.tensor([5, 6, 5])
    P, Q = model.user_embedding.weight.detach(), model.item_embedding.weight.detach()
    expected = sum(
        float((P[u] ** 2).sum() + (Q[p] ** 2).sum() + (Q[n] ** 2).sum()) for u, p, n in zip(users, pos, neg)
    ) / (2 * len(users))
    assert model.regularization(users, pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_regularization_matches_recbole_embloss():
    emb_loss = pytest.importorskip("recbole.model.loss").EmbLoss()
    torch.manual_seed(0)
    model = MF(5, 7, dim=3)
    users, pos, neg = torch.tensor([0, 1, 4]), torch.tensor([2, 3, 4]), torch.tensor([5, 6, 0])
    embs = model.user_embedding(users), model.item_embedding(pos), model.item_embedding(neg)
    ref = emb_loss(*embs, require_pow=True)
    torch.testing.assert_close(model.regularization(users, pos, neg), ref.squeeze())


def test_default_init_is_xavier_normal_and_init_std_overrides_it():
    torch.manual_seed(0)
    weight = MF(3000, 10, dim=64).user_embedding.weight
    assert weight.std().item() == pytest.approx(math.sqrt(2 / (3000 + 64)), rel=0.03)
    weight = MF(3000, 10, dim=64, init_std=0.01).user_embedding.weight
    assert weight.std().item() == pytest.approx(0.01, rel=0.03)


def test_gradient_touches_only_batch_rows():
    torch.manual_seed(0)
    model = MF(5, 7, dim=4)
    user_vecs, item_vecs = model.encode(torch.tensor([1, 3]))
    (user_vecs * item_vecs[torch.tensor([2, 6])]).sum().backward()
    assert model.user_embedding.weight.grad.abs().sum(1).nonzero().flatten().tolist() == [1, 3]
    assert model.item_embedding.weight.grad.abs().sum(1).nonzero().flatten().tolist() == [2, 6]
