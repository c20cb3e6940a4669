"""GRU4Rec and SASRec: explicit-equation oracles, padding invariance, causality, pad row, errors."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fairlit.models import GRU4Rec, SASRec

NUM_ITEMS, PAD, DIM = 9, 9, 8
MODELS = [GRU4Rec, SASRec]


def build(cls):
    torch.manual_seed(0)
    extra = {"num_heads": 2, "inner_size": 16, "max_len": 12} if cls is SASRec else {"hidden_size": 6}
    return cls(5, NUM_ITEMS, dim=DIM, **extra).eval()


def gru_reference(model: GRU4Rec, items: list[int]) -> torch.Tensor:
    """dense(h_ℓ) with the bias-free GRU equations, gates ordered (r, z, n) as in torch."""
    w_ih, w_hh = model.gru.weight_ih_l0, model.gru.weight_hh_l0
    h = torch.zeros(w_hh.shape[1])
    for x in model.item_embedding.weight[items]:
        r_i, z_i, n_i = (w_ih @ x).chunk(3)
        r_h, z_h, n_h = (w_hh @ h).chunk(3)
        r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
        h = (1 - z) * torch.tanh(n_i + r * n_h) + z * h
    return model.dense(h)


def sasrec_reference(model: SASRec, items: list[int]) -> torch.Tensor:
    """RecBole's SASRec forward written out for one unpadded sequence; returns the last position."""
    length = len(items)
    x = model.item_embedding.weight[items] + model.position_embedding.weight[:length]
    x = model.norm(x)
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    for block in model.blocks:
        heads = block.attn.num_heads
        q, k, v = (x @ block.attn.in_proj_weight.T + block.attn.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.view(length, heads, -1).transpose(0, 1) for t in (q, k, v))  # (nh, T, hs)
        scores = (q @ k.transpose(1, 2) / math.sqrt(q.shape[-1])).masked_fill(future, -math.inf)
        context = (scores.softmax(-1) @ v).transpose(0, 1).reshape(length, -1)
        x = block.norm1(x + block.attn.out_proj(context))
        x = block.norm2(x + block.ffn_out(torch.nn.functional.gelu(block.ffn_in(x))))
    return x[-1]


REFERENCES = {GRU4Rec: gru_reference, SASRec: sasrec_reference}
SEQUENCES = [[3], [1, 2], [4, 0, 8, 8], [7, 6, 5, 4, 3, 2]]


@pytest.mark.parametrize("cls", MODELS)
def test_encode_equals_explicit_equations_on_left_padded_batch(cls):
    model = build(cls)
    width = max(map(len, SEQUENCES))
    history = torch.tensor([[PAD] * (width - len(s)) + s for s in SEQUENCES])
    user_vecs, item_vecs = model.encode(torch.arange(len(SEQUENCES)), history)
    with torch.no_grad():
        expected = torch.stack([REFERENCES[cls](model, s) for s in SEQUENCES])
    torch.testing.assert_close(user_vecs, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(item_vecs, model.item_embedding.weight[:NUM_ITEMS])


@pytest.mark.parametrize("cls", MODELS)
@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    items=st.lists(st.integers(0, NUM_ITEMS - 1), min_size=1, max_size=5),
    pad_slots=st.lists(st.integers(0, 5), max_size=7),
)
def test_padding_anywhere_does_not_change_the_output(cls, items, pad_slots):
    model = build(cls)
    padded = list(items)
    for slot in pad_slots:
        padded.insert(min(slot, len(padded)), PAD)
    pads = [PAD] * (len(padded) - len(items))
    history = torch.tensor([pads + items, items + pads, padded])  # left, right, scattered
    user_vecs, _ = model.encode(torch.zeros(3, dtype=torch.long), history)
    torch.testing.assert_close(user_vecs, user_vecs[:1].expand(3, -1), rtol=1e-5, atol=1e-6)
    alone, _ = model.encode(torch.zeros(1, dtype=torch.long), torch.tensor([items]))
    torch.testing.assert_close(user_vecs[:1], alone, rtol=1e-5, atol=1e-6)


def test_sasrec_is_causal():
    model = build(SASRec)
    states = model.sequence_states(torch.tensor([[1, 2, 3, 4], [1, 2, 7, 8]]))
    torch.testing.assert_close(states[0, :2], states[1, :2])
    assert not torch.allclose(states[0, 2:], states[1, 2:])
    prefix, _ = model.encode(torch.tensor([0]), torch.tensor([[PAD, PAD, 1, 2]]))
    torch.testing.assert_close(prefix[0], states[0, 1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", MODELS)
def test_users_are_ignored(cls):
    model = build(cls)
    history = torch.tensor([[PAD, 1, 2], [3, 4, 5]])
    torch.testing.assert_close(
        model.encode(torch.tensor([0, 1]), history)[0], model.encode(torch.tensor([4, 4]), history)[0]
    )


@pytest.mark.parametrize("cls", MODELS)
def test_pad_row_is_zero_hidden_and_frozen(cls):
    model = build(cls).train()
    assert model.item_embedding.weight[PAD].abs().sum() == 0
    user_vecs, item_vecs = model.encode(torch.tensor([0, 1]), torch.tensor([[PAD, 1, 2], [PAD, PAD, PAD]]))
    assert item_vecs.shape == (NUM_ITEMS, DIM)
    assert torch.isfinite(user_vecs).all()  # an all-pad history still gives a vector
    torch.nn.functional.cross_entropy(user_vecs @ item_vecs.T, torch.tensor([3, 4])).backward()
    assert model.item_embedding.weight.grad[PAD].abs().sum() == 0


@pytest.mark.parametrize("cls", MODELS)
def test_dropout_only_in_training(cls):
    model = build(cls)
    args = torch.tensor([0]), torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(model.encode(*args)[0], model.encode(*args)[0])
    model.train()
    assert not torch.allclose(model.encode(*args)[0], model.encode(*args)[0])


@pytest.mark.parametrize("cls", MODELS)
@pytest.mark.parametrize(
    ("users", "history", "match"),
    [
        (torch.tensor([0]), None, "history"),
        (torch.tensor([0, 1]), torch.tensor([1, 2]), r"\[B, H\]"),
        (torch.tensor([0, 1]), torch.tensor([[1, 2]]), r"\[B, H\]"),
    ],
)
def test_bad_history_raises(cls, users, history, match):
    with pytest.raises(ValueError, match=match):
        build(cls).encode(users, history)


def test_sasrec_rejects_history_longer_than_max_len():
    with pytest.raises(ValueError, match="max_len"):
        build(SASRec).encode(torch.tensor([0]), torch.ones(1, 13, dtype=torch.long))
