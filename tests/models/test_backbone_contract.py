"""Interface checks shared by every backbone: constructor, shapes, flags, gradients, regularisation."""

import inspect

import pytest
import torch

from fairlit.models import MF, GRU4Rec, LightGCN, NeuMF, SASRec

NUM_USERS, NUM_ITEMS, DIM, B = 6, 9, 8, 4
DOT_MODELS = [MF, LightGCN, GRU4Rec, SASRec]


def build(cls):
    torch.manual_seed(0)
    model = cls(NUM_USERS, NUM_ITEMS, dim=DIM)
    if cls is LightGCN:
        model.set_interactions(torch.tensor([0, 0, 1, 2, 3, 4, 5]), torch.tensor([0, 1, 2, 3, 4, 5, 8]))
    return model


@pytest.mark.parametrize("cls", [*DOT_MODELS, NeuMF])
@pytest.mark.parametrize("dim", [0, -3])
def test_a_width_below_one_is_refused_by_name(cls, dim):
    with pytest.raises(ValueError, match=f"{cls.__name__}: `dim` must be an integer >= 1, got {dim}"):
        cls(NUM_USERS, NUM_ITEMS, dim=dim)


def batch():
    users = torch.tensor([0, 2, 3, 5])
    history = torch.tensor([[NUM_ITEMS, 1, 2], [3, 4, 5], [NUM_ITEMS, NUM_ITEMS, 8], [0, 6, 7]])
    return users, history


@pytest.mark.parametrize("cls", [*DOT_MODELS, NeuMF])
def test_constructor_takes_counts_first_then_keyword_defaults(cls):
    params = list(inspect.signature(cls).parameters.values())
    assert [p.name for p in params[:2]] == ["num_users", "num_items"]
    assert all(p.default is inspect.Parameter.empty for p in params[:2])
    assert all(p.default is not inspect.Parameter.empty for p in params[2:])
    assert build(cls).dim == DIM


@pytest.mark.parametrize("cls", DOT_MODELS)
def test_encode_shapes_and_dot_flag(cls):
    model = build(cls)
    user_vecs, item_vecs = model.encode(*batch())
    assert cls.dot_product is True
    assert user_vecs.shape == (B, DIM)
    assert item_vecs.shape == (NUM_ITEMS, DIM)


def test_neumf_is_not_dot_product_and_scores_candidates():
    model = build(NeuMF)
    assert NeuMF.dot_product is False
    assert model.score(batch()[0], torch.randint(0, NUM_ITEMS, (B, 5))).shape == (B, 5)


@pytest.mark.parametrize("cls", [*DOT_MODELS, NeuMF])
@pytest.mark.parametrize("neg_shape", [(B,), (B, 3)])
def test_regularization_is_a_nonnegative_scalar(cls, neg_shape):
    model = build(cls)
    users = batch()[0]
    reg = model.regularization(users, torch.arange(B), torch.randint(0, NUM_ITEMS, neg_shape))
    assert reg.shape == () and reg.item() > 0


@pytest.mark.parametrize("cls", DOT_MODELS)
def test_every_parameter_gets_a_gradient_from_a_softmax_loss(cls):
    model = build(cls)
    users, history = batch()
    user_vecs, item_vecs = model.encode(users, history)
    torch.nn.functional.cross_entropy(user_vecs @ item_vecs.T, torch.tensor([1, 2, 3, 4])).backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_neumf_every_parameter_gets_a_gradient():
    model = build(NeuMF)
    model.score(batch()[0], torch.randint(0, NUM_ITEMS, (B, 3))).sum().backward()
    for name, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("cls", DOT_MODELS)
def test_double_moves_every_tensor(cls):
    model = build(cls).double()
    user_vecs, item_vecs = model.encode(*batch())
    assert user_vecs.dtype == item_vecs.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("cls", DOT_MODELS)
def test_cuda_matches_cpu(cls):
    model = build(cls).eval()
    users, history = batch()
    expected = model.encode(users, history)
    got = model.cuda().encode(users.cuda(), history.cuda())
    for e, g in zip(expected, got):
        torch.testing.assert_close(g.cpu(), e, rtol=1e-4, atol=1e-5)
