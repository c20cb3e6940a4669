"""bpr_adam_step vs fairlit.ops.reference and vs autograd + torch.optim.Adam, opcheck, torch.compile, bad inputs."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from fairlit import ops
from fairlit.ops import reference
from tests.conftest import devices
from tests.ops.helpers import HAS_OP, tol

STATE = ("user_exp_avg", "user_exp_avg_sq", "item_exp_avg", "item_exp_avg_sq", "user_step", "item_step")


def make_state(num_users, num_items, dim, dtype, seed, steps=0, device="cpu"):
    """[P, Q, moments..., steps...]; with steps > 0 the moments are those of an Adam run that far (non-zero)."""
    gen = torch.Generator().manual_seed(seed)
    tables = [torch.randn(rows, dim, generator=gen, dtype=torch.float64) for rows in (num_users, num_items)]
    moments = []
    for table in tables:
        moments += [torch.randn(table.shape, generator=gen, dtype=torch.float64) * 0.1 * (steps > 0),
                    torch.rand(table.shape, generator=gen, dtype=torch.float64) * 0.01 * (steps > 0)]
    out = [t.to(dtype) for t in tables + moments] + [torch.tensor(float(steps)), torch.tensor(float(steps))]
    return [t.to(device) for t in out]


@st.composite
def cases(draw):
    """Sizes with few rows (repeated ids within a batch: the accumulation), options, a seed."""
    return dict(S=draw(st.integers(1, 3)), B=draw(st.integers(1, 12)), M=draw(st.integers(1, 3)),
                dim=draw(st.sampled_from([1, 3, 8, 33, 64])), num_users=draw(st.integers(1, 6)),
                num_items=draw(st.integers(1, 9)), weighted=draw(st.sampled_from(["none", "random", "zeros"])),
                reg_weight=draw(st.sampled_from([0.0, 0.3])), weight_decay=draw(st.sampled_from([0.0, 0.05])),
                sigmoid=draw(st.booleans()), steps=draw(st.sampled_from([0, 7])), seed=draw(st.integers(0, 2**16)))


def batches(c, device="cpu"):
    gen = torch.Generator().manual_seed(c["seed"] + 1)
    S, B, M = c["S"], c["B"], c["M"]
    users = torch.randint(c["num_users"], (S, B), generator=gen)
    pos = torch.randint(c["num_items"], (S, B), generator=gen)
    neg = torch.randint(c["num_items"], (S, B, M), generator=gen)
    weight = {"none": None, "random": torch.rand(S, B, generator=gen, dtype=torch.float64) * 2,
              "zeros": torch.zeros(S, B, dtype=torch.float64)}[c["weighted"]]
    return [None if t is None else t.to(device) for t in (users, pos, neg, weight)]


@pytest.mark.parametrize("device", devices())
@given(case=cases(), dtype=st.sampled_from([torch.float32, torch.float64]))
def test_matches_reference(device, case, dtype):
    state = make_state(case["num_users"], case["num_items"], case["dim"], dtype, case["seed"], case["steps"], device)
    want = [t.detach().cpu().clone() for t in state]
    users, pos, neg, weight = batches(case, device)
    weight = None if weight is None else weight.to(dtype)
    # eps = 1e-4: Adam turns any gradient, however tiny, into a step of ~lr; a gradient that is 0 on one side
    # and 1e-17 (rounding) on the other would otherwise look like a difference of lr.
    hyper = dict(reg_weight=case["reg_weight"], sigmoid_scores=case["sigmoid"], lr=0.01, beta1=0.9, beta2=0.99,
                 eps=1e-4, weight_decay=case["weight_decay"])
    losses = ops.bpr_adam_step(*state, users, pos, neg, weight, **hyper)
    want_losses = reference.bpr_adam_step(*want, users.cpu(), pos.cpu(), neg.cpu(),
                                          None if weight is None else weight.cpu(), *hyper.values())
    assert losses.dtype == torch.float64 and losses.shape == (case["S"],)
    torch.testing.assert_close(losses.cpu(), want_losses, **tol(dtype, 10))
    for name, got, expected in zip(("user_emb", "item_emb") + STATE, state, want):
        torch.testing.assert_close(got.cpu(), expected, **tol(dtype, 10), msg=lambda m, n=name: f"{n}: {m}")
    assert float(state[-1]) == case["steps"] + case["S"]


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("weight_decay, reg_weight, num_neg", [(0.0, 0.0, 1), (0.01, 0.1, 3)])
def test_equals_autograd_with_torch_adam(device, weight_decay, reg_weight, num_neg):
    """Ten steps of BPR-MF by autograd + torch.optim.Adam (default eps, the non-fused implementation)."""
    gen = torch.Generator().manual_seed(0)
    P = torch.nn.Parameter(torch.randn(50, 16, generator=gen, dtype=torch.float64).to(device))
    Q = torch.nn.Parameter(torch.randn(80, 16, generator=gen, dtype=torch.float64).to(device))
    adam = torch.optim.Adam([P, Q], lr=0.01, weight_decay=weight_decay, foreach=False)
    state = [P.detach().clone(), Q.detach().clone()] + [torch.zeros_like(t) for t in (P, P, Q, Q)] + [
        torch.zeros((), device=device), torch.zeros((), device=device)]
    for _ in range(10):
        users = torch.randint(50, (32,), generator=gen).to(device)
        pos = torch.randint(40, (32,), generator=gen).to(device)             # positives and negatives disjoint
        neg = (40 + torch.randint(40, (32, num_neg), generator=gen)).to(device)
        adam.zero_grad()
        pu, qp, qn = P[users], Q[pos], Q[neg]
        loss = F.softplus((pu.unsqueeze(1) * qn).sum(-1) - (pu * qp).sum(-1, keepdim=True)).mean() + reg_weight * (
            pu.pow(2).sum() + qp.pow(2).sum() + qn.pow(2).sum()) / 64
        loss.backward()
        adam.step()
        got = ops.bpr_adam_step(*state, users, pos, neg, reg_weight=reg_weight, lr=0.01, weight_decay=weight_decay)
        torch.testing.assert_close(got[0], loss.detach().double(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(state[0], P.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state[1], Q.detach(), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(state[4], adam.state[Q]["exp_avg"], rtol=1e-10, atol=1e-12)
    assert float(state[6]) == float(adam.state[P]["step"]) == 10


def test_s_batches_in_one_call_equal_s_calls():
    state = make_state(9, 13, 8, torch.float32, seed=1)
    again = [t.clone() for t in state]
    users, pos, neg, _ = batches(dict(S=4, B=5, M=2, num_users=9, num_items=13, weighted="none", seed=3))
    together = ops.bpr_adam_step(*state, users, pos, neg, lr=0.05)
    apart = torch.cat([ops.bpr_adam_step(*again, users[s], pos[s], neg[s], lr=0.05) for s in range(4)])
    assert torch.equal(together, apart)
    for a, b in zip(state, again):
        assert torch.equal(a, b)


def test_zero_batches_change_nothing():
    state = make_state(4, 5, 3, torch.float32, seed=0, steps=2)
    before = [t.clone() for t in state]
    none = torch.zeros(0, 6, dtype=torch.long)
    losses = ops.bpr_adam_step(*state, none, none, none[..., None])
    assert losses.shape == (0,) and all(torch.equal(a, b) for a, b in zip(state, before))


@pytest.mark.skipif(not HAS_OP, reason="opcheck needs the compiled library")
def test_opcheck():
    state = make_state(6, 7, 4, torch.float32, seed=0, steps=3)
    users, pos, neg, weight = batches(dict(S=2, B=4, M=2, num_users=6, num_items=7, weighted="random", seed=0))
    args = (*state, users, pos, neg, weight.float(), 0.1, True, 1e-2, 0.9, 0.999, 1e-8, 0.01)
    torch.library.opcheck(torch.ops.fairlit.bpr_adam_step, args)


@pytest.mark.skipif(not HAS_OP, reason="the reference fallback differentiates with torch.autograd.grad, which "
                    "dynamo does not trace; the custom op is what must compile without a graph break")
def test_torch_compile_fullgraph_matches_eager():
    eager = make_state(6, 7, 4, torch.float64, seed=2)
    compiled_state = [t.clone() for t in eager]
    users, pos, neg, _ = batches(dict(S=1, B=5, M=1, num_users=6, num_items=7, weighted="none", seed=4))

    def step(*tensors):
        return ops.bpr_adam_step(*tensors, users[0], pos[0], neg[0], reg_weight=0.2, lr=0.03)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(*compiled_state), step(*eager))
    for a, b in zip(compiled_state, eager):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not HAS_OP, reason="the autograd kernel is C++")
def test_refuses_to_run_under_autograd():
    state = make_state(3, 3, 2, torch.float32, seed=0)
    state[0].requires_grad_()
    one = torch.zeros(1, 1, dtype=torch.long)
    with pytest.raises(RuntimeError, match="optimizer step .* torch.no_grad"):
        torch.ops.fairlit.bpr_adam_step(*state, one, one, one[..., None], None, 0.0, False, 0.1, 0.9, 0.99, 1e-8, 0.0)
    ops.bpr_adam_step(*state, one[0], one[0], one[0])   # the public op runs under no_grad
    assert float(state[-1]) == 1


def _call(**change):
    state = dict(zip(("user_emb", "item_emb") + STATE, make_state(3, 4, 2, torch.float32, seed=0)))
    batch = dict(users=torch.tensor([0, 2]), pos=torch.tensor([1, 3]), neg=torch.tensor([[0], [2]]), weight=None)
    args = state | batch
    options = {k: change.pop(k) for k in list(change) if k in ("lr", "beta1", "beta2", "eps", "weight_decay",
                                                                "reg_weight", "validate")}
    args |= change
    return ops.bpr_adam_step(*args.values(), **options)


@pytest.mark.parametrize("change, error, message", [
    (dict(users=torch.tensor([0, 3])), ValueError, "`users` contains user id 3; expected ids in \\[0, 3\\)"),
    (dict(pos=torch.tensor([1, 4])), ValueError, "`pos` contains item id 4"),
    (dict(neg=torch.tensor([[0], [-1]])), ValueError, "`neg` contains item id -1"),
    (dict(weight=torch.tensor([1.0, float("nan")])), ValueError, "`weight` contains NaN"),
    (dict(weight=torch.tensor([1.0, 2.0], dtype=torch.float64)), TypeError, "`weight` has dtype"),
    (dict(weight=torch.ones(3)), ValueError, "`weight` must have the shape of `users`"),
    (dict(users=torch.tensor([0.0, 1.0])), TypeError, "`users` must be an int64 tensor"),
    (dict(pos=torch.tensor([1])), ValueError, "`pos` must have the shape of `users`"),
    (dict(neg=torch.zeros(3, 1, dtype=torch.long)), ValueError, "`neg` must be \\[B\\] / \\[B, M\\]"),
    (dict(neg=torch.zeros(2, 0, dtype=torch.long)), ValueError, "M >= 1"),
    (dict(users=torch.zeros(0, dtype=torch.long), pos=torch.zeros(0, dtype=torch.long),
          neg=torch.zeros(0, 1, dtype=torch.long)), ValueError, "at least one row"),
    (dict(user_emb=torch.zeros(3, 2, dtype=torch.float16)), TypeError, "`user_emb` must be a 2-D float32 or float64"),
    (dict(item_emb=torch.zeros(4, 3)), ValueError, "`user_emb` has dim 2 but `item_emb` has dim 3"),
    (dict(item_exp_avg=torch.zeros(5, 2)), ValueError, "`item_exp_avg` must be shaped like `item_emb`"),
    (dict(user_step=torch.zeros(2)), ValueError, "`user_step` must hold one element"),
    (dict(item_step=torch.zeros((), device="meta")), ValueError, "`item_step` is on meta"),
    (dict(user_step=torch.zeros((), dtype=torch.float64)), TypeError,
     "`user_step` \\(Adam's step count\\) must be float32"),
    (dict(lr=-1.0), ValueError, "`lr` must be >= 0"),
    (dict(beta1=1.0), ValueError, "`beta1` must be in \\[0, 1\\)"),
    (dict(reg_weight=float("nan")), ValueError, "`reg_weight` must be >= 0"),
    (dict(eps=0.0), ValueError, "`eps` must be > 0 and finite, got 0.0"),
    (dict(lr=float("inf")), ValueError, "`lr` must be >= 0 and finite"),
    (dict(weight_decay=-0.1), ValueError, "`weight_decay` must be >= 0"),
    (dict(beta2=1.0), ValueError, "`beta2` must be in \\[0, 1\\)"),
])
def test_bad_input_names_the_argument(change, error, message):
    with pytest.raises(error, match=message):
        _call(**change)


@pytest.mark.skipif(not HAS_OP, reason="kernel checks need the compiled library")
def test_kernel_checks_ids_without_validation():
    with pytest.raises(RuntimeError, match="`neg` contains id 9; expected ids in \\[0, 4\\)"):
        _call(neg=torch.tensor([[0], [9]]), validate=False)


@pytest.mark.skipif(not HAS_OP, reason="kernel checks need the compiled library")
def test_kernel_checks_state_without_validation():
    with pytest.raises(RuntimeError, match="`item_exp_avg` must be a contiguous Float tensor shaped like `item_emb`"):
        _call(item_exp_avg=torch.zeros(5, 2), validate=False)
    with pytest.raises(RuntimeError, match="`weight` dtype must match the tables"):
        _call(weight=torch.ones(2, dtype=torch.float64), validate=False)
    with pytest.raises(RuntimeError, match="`item_step` \\(Adam's step count\\) must be float32, got Double"):
        _call(item_step=torch.zeros((), dtype=torch.float64), validate=False)
