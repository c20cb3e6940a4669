"""LightGCN against a dense NumPy propagation, plus its graph handling and errors."""

import numpy as np
import pytest
import torch

from fairlit.models import LightGCN

NUM_USERS, NUM_ITEMS = 4, 5
# User 3 and item 4 are isolated; (0, 1) is repeated and must count once.
USERS = torch.tensor([0, 0, 0, 1, 1, 2])
ITEMS = torch.tensor([0, 1, 1, 1, 2, 3])


def dense_adjacency() -> np.ndarray:
    """Â = D^-1/2 [[0, R], [R^T, 0]] D^-1/2 with binary R and zero rows for isolated nodes."""
    R = np.zeros((NUM_USERS, NUM_ITEMS))
    R[USERS.numpy(), ITEMS.numpy()] = 1.0
    A = np.block([[np.zeros((NUM_USERS, NUM_USERS)), R], [R.T, np.zeros((NUM_ITEMS, NUM_ITEMS))]])
    deg = A.sum(1)
    d_inv_sqrt = np.divide(1.0, np.sqrt(deg), out=np.zeros_like(deg), where=deg > 0)
    return d_inv_sqrt[:, None] * A * d_inv_sqrt[None, :]


def build(num_layers: int) -> LightGCN:
    torch.manual_seed(0)
    model = LightGCN(NUM_USERS, NUM_ITEMS, dim=3, num_layers=num_layers).double()
    model.set_interactions(USERS, ITEMS)
    return model


@pytest.mark.parametrize("num_layers", [0, 1, 2, 3])
def test_propagation_equals_dense_layer_mean(num_layers):
    model = build(num_layers)
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach().numpy()
    adj = dense_adjacency()
    layers = [ego]
    for _ in range(num_layers):
        layers.append(adj @ layers[-1])
    expected = np.mean(layers, axis=0)
    users = torch.tensor([3, 0, 2])
    user_vecs, item_vecs = model.encode(users)
    np.testing.assert_allclose(user_vecs.detach().numpy(), expected[users.numpy()], rtol=1e-12)
    np.testing.assert_allclose(item_vecs.detach().numpy(), expected[NUM_USERS:], rtol=1e-12)


def test_gradient_reaches_exactly_the_nodes_within_num_layers_hops():
    model = build(2)
    user_vecs, _ = model.encode(torch.tensor([1]))
    user_vecs.sum().backward()
    # User 1 -> items 1, 2 -> user 0; item 0 is three hops away and must get no gradient.
    reach = np.linalg.matrix_power(np.eye(NUM_USERS + NUM_ITEMS) + dense_adjacency(), 2)[1] > 0
    assert reach.sum() == 4
    grads = torch.cat([model.user_embedding.weight.grad, model.item_embedding.weight.grad]).abs().sum(1)
    np.testing.assert_array_equal(grads.numpy() > 0, reach)


def test_regularization_uses_ego_embeddings():
    model = build(2)
    users, pos, neg = torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([4, 0])
    P, Q = model.user_embedding.weight.detach(), model.item_embedding.weight.detach()
    # RecBole default (require_pow=False): Frobenius norms of the three batch matrices / B.
    plain = (P[users].norm() + Q[pos].norm() + Q[neg].norm()) / 2
    torch.testing.assert_close(model.regularization(users, pos, neg), plain)
    model.reg_squared = True
    squared = ((P[users] ** 2).sum() + (Q[pos] ** 2).sum() + (Q[neg] ** 2).sum()) / (2 * 2)
    torch.testing.assert_close(model.regularization(users, pos, neg), squared)


def test_graph_is_not_saved_and_can_be_rebuilt():
    model = build(2)
    state = model.state_dict()
    assert not any(key.startswith("adj") for key in state)
    fresh = LightGCN(NUM_USERS, NUM_ITEMS, dim=3, num_layers=2).double()
    fresh.load_state_dict(state)
    with pytest.raises(RuntimeError, match="set_interactions"):
        fresh.encode(torch.tensor([0]))
    fresh.set_interactions(USERS, ITEMS)
    torch.testing.assert_close(fresh.encode(torch.tensor([0, 1])), model.encode(torch.tensor([0, 1])))


def test_encode_before_set_interactions_raises():
    with pytest.raises(RuntimeError, match="set_interactions"):
        LightGCN(3, 3).encode(torch.tensor([0]))


@pytest.mark.parametrize(
    ("users", "items"),
    [
        (torch.tensor([0, 1]), torch.tensor([0])),  # length mismatch
        (torch.tensor([[0, 1]]), torch.tensor([[0, 1]])),  # not 1-D
        (torch.tensor([0, NUM_USERS]), torch.tensor([0, 1])),  # user out of range
        (torch.tensor([0, 1]), torch.tensor([-1, 1])),  # item out of range
    ],
)
def test_set_interactions_rejects_bad_input(users, items):
    with pytest.raises(ValueError):
        LightGCN(NUM_USERS, NUM_ITEMS).set_interactions(users, items)
