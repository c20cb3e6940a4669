"""NeuMF: score against an explicit per-pair formula, initialisation, regularisation, errors."""

import pytest
import torch

from fairlit.models import NeuMF


def build() -> NeuMF:
    torch.manual_seed(0)
    return NeuMF(4, 6, dim=5, num_mlp_layers=3, init_std=0.3).eval()


def reference_score(model: NeuMF, u: int, i: int) -> torch.Tensor:
    """ŷ = w^T [p_mf ⊙ q_mf ; MLP([p_mlp ; q_mlp])] + b_u + b_i for one pair, from raw weights."""
    h = torch.cat([model.user_mlp.weight[u], model.item_mlp.weight[i]])
    for layer in model.mlp:
        if isinstance(layer, torch.nn.Linear):
            h = torch.relu(layer.weight @ h)
    gmf = model.user_mf.weight[u] * model.item_mf.weight[i]
    bias = model.user_bias.weight[u, 0] + model.item_bias.weight[i, 0]
    return model.predict.weight[0] @ torch.cat([gmf, h]) + bias


def test_score_equals_per_pair_formula():
    model = build()
    users, items = torch.tensor([0, 3]), torch.tensor([[5, 1, 1], [0, 2, 4]])
    scores = model.score(users, items)
    assert scores.shape == (2, 3)
    with torch.no_grad():
        expected = torch.tensor([[reference_score(model, u, i) for i in row] for u, row in zip(users, items)])
    torch.testing.assert_close(scores, expected)


def test_architecture_matches_fade_code():
    model = NeuMF(4, 6)
    linears = [m for m in model.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 64)] + [(64, 64)] * 3
    assert all(m.bias is None for m in [*linears, model.predict])


def test_init_is_normal_with_init_std():
    torch.manual_seed(0)
    model = NeuMF(3000, 3000, dim=64)
    for table in (model.user_mf, model.item_mlp, model.user_bias):
        assert table.weight.std().item() == pytest.approx(0.01, rel=0.05)


def test_regularization_equals_hand_computation():
    model = build()
    users, pos, neg = torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([[4, 5], [0, 1]])
    total = sum(
        (user_table.weight[users] ** 2).sum() + (item_table.weight[pos] ** 2).sum()
        + (item_table.weight[neg] ** 2).sum()
        for user_table, item_table in [(model.user_mf, model.item_mf), (model.user_mlp, model.item_mlp)]
    )
    torch.testing.assert_close(model.regularization(users, pos, neg), total / (2 * 2))


@pytest.mark.parametrize("items", [torch.tensor([1, 2]), torch.tensor([[1, 2]] * 3)])
def test_score_rejects_bad_candidate_shape(items):
    with pytest.raises(ValueError, match=r"\[B, C\]"):
        build().score(torch.tensor([0, 1]), items)
