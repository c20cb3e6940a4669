"""fairdual_bpr_adam_step vs fairlit.ops.reference and vs the loop of the three public ops it runs, opcheck,
torch.compile, autograd refusal, bad inputs."""
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fairlit import ops
from fairlit.ops import reference
from tests.conftest import devices
from tests.ops.helpers import HAS_OP, tol
from tests.ops.test_train_step import make_state

DUAL = ("mu", "gmom", "gamma")


@st.composite
def cases(draw):
    """Sizes (few items: ties between the Q sampled items' groups, repeated rows), every option, a seed."""
    num_items = draw(st.integers(2, 12))
    num_samples = draw(st.integers(1, num_items))
    return dict(S=draw(st.integers(1, 3)), B=draw(st.integers(1, 8)), M=draw(st.integers(1, 2)),
                num_users=draw(st.integers(1, 6)), num_items=num_items, Q=num_samples,
                topk=draw(st.integers(1, num_samples)), dim=draw(st.sampled_from([2, 8])), G=draw(st.integers(1, 4)),
                P=draw(st.integers(1, 2)), weight_mode=draw(st.sampled_from(["target_group", "topk_exposure"])),
                utility=draw(st.sampled_from(["exposure", "sigmoid"])), frozen=draw(st.booleans()),
                metric=draw(st.sampled_from(["weighted", "euclid"])), target=draw(st.sampled_from(["remaining",
                                                                                                   "constant"])),
                s_min=draw(st.sampled_from([0.0, 0.5])), lam=draw(st.sampled_from([0.0, 0.5, 5.0])),
                eta=draw(st.sampled_from([0.05, 1.0])), alpha=draw(st.sampled_from([0.3, 1.0])),
                mu0=draw(st.sampled_from([0.0, 1.0, "random"])), reg_weight=draw(st.sampled_from([0.0, 0.1])),
                sigmoid=draw(st.booleans()), seed=draw(st.integers(0, 2**16)))


def make_inputs(c, dtype=torch.float64, mu_dtype=torch.float64, device="cpu"):
    """(positional tensors of the public op, its keyword options) for case ``c``."""
    gen = torch.Generator().manual_seed(c["seed"])
    S, B, G, num_items = c["S"], c["B"], c["G"], c["num_items"]
    state = make_state(c["num_users"], num_items, c["dim"], dtype, c["seed"], steps=3, device=device)
    users = torch.randint(c["num_users"], (S, B), generator=gen)
    pos = torch.randint(num_items, (S, B), generator=gen)
    neg = torch.randint(num_items, (S, B, c["M"]), generator=gen)
    sampled = torch.stack([torch.randperm(num_items, generator=gen)[: c["Q"]] for _ in range(S)])
    group_ids = torch.randint(G, (num_items, c["P"]), generator=gen)
    group_weights = torch.rand(num_items, c["P"], generator=gen)
    group_weights[:, -1] *= torch.rand(num_items, generator=gen) < 0.7      # some padding slots (weight 0)
    group_weights = group_weights / group_weights.sum(1, keepdim=True).clamp(min=1e-3)
    mu = (torch.randn(G, generator=gen, dtype=torch.float64) if c["mu0"] == "random"
          else torch.full((G,), float(c["mu0"]), dtype=torch.float64))
    gmom = torch.randn(G, generator=gen, dtype=torch.float64) * 0.1
    rho = torch.rand(G, generator=gen, dtype=torch.float64) + 0.1
    rho = rho / rho.sum()
    mhat = G * rho
    dual = [t.to(mu_dtype) for t in (mu, gmom, rho.clone(), rho, mhat)]
    signal_items = state[1].clone() + 0.01 if c["frozen"] else None
    tensors = [*state, users, pos, neg, *dual[:3], sampled, group_ids, group_weights, *dual[3:]]
    tensors = [t.to(device) for t in tensors]
    options = dict(topk=c["topk"], batch_fraction=B / 50, lam=c["lam"], eta=c["eta"], alpha=c["alpha"],
                   signal_items=None if signal_items is None else signal_items.to(device), utility=c["utility"],
                   weight_mode=c["weight_mode"], s_min=c["s_min"], metric=c["metric"], target=c["target"],
                   reg_weight=c["reg_weight"], sigmoid_scores=c["sigmoid"], lr=0.01, beta1=0.9, beta2=0.99, eps=1e-4)
    return tensors, options


def schema_args(tensors, o, device="cpu"):
    """The op schema's positional arguments (the reference's too) from `make_inputs`' output, copied to `device`."""
    t = [x.detach().to(device, copy=True) for x in tensors]
    return (*t[:14], t[14], None if o["signal_items"] is None else o["signal_items"].to(device), *t[15:19], o["topk"],
            o["utility"] == "sigmoid", o["weight_mode"] == "topk_exposure", o["s_min"], o["batch_fraction"], o["lam"],
            o["eta"], o["alpha"], o["metric"] == "weighted", o["target"] == "remaining", o["reg_weight"],
            o["sigmoid_scores"], o["lr"], o["beta1"], o["beta2"], o["eps"], 0.0)


@pytest.mark.parametrize("device", devices())
@given(case=cases(), dtypes=st.sampled_from([(torch.float64, torch.float64), (torch.float32, torch.float64),
                                             (torch.float32, torch.float32)]))
def test_matches_reference(device, case, dtypes):
    dtype, mu_dtype = dtypes
    tensors, options = make_inputs(case, dtype, mu_dtype, device)
    want = schema_args(tensors, options)
    losses, weights = ops.fairdual_bpr_adam_step(*tensors, **options)
    want_losses, want_weights = reference.fairdual_bpr_adam_step(*want)
    assert losses.shape == (case["S"],) and losses.dtype == torch.float64
    assert weights.shape == (case["S"], case["B"]) and weights.dtype == dtype
    scale = 10 if dtype == torch.float64 else 50
    torch.testing.assert_close(weights.cpu(), want_weights, **tol(dtype, scale))
    torch.testing.assert_close(losses.cpu(), want_losses, **tol(dtype, scale))
    names = ("user_emb", "item_emb", "user_exp_avg", "user_exp_avg_sq", "item_exp_avg", "item_exp_avg_sq",
             "user_step", "item_step", "users", "pos", "neg") + DUAL
    for name, got, expected in zip(names, tensors[:14], want[:14]):  # all downstream of scores in `dtype`
        torch.testing.assert_close(got.cpu(), expected, **tol(dtype, scale), msg=lambda m, n=name: f"{n}: {m}")
    assert float(tensors[6]) == 3 + case["S"]
    if case["weight_mode"] == "target_group":
        assert bool((weights >= case["s_min"]).all())


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("weight_mode, utility, frozen", [("target_group", "exposure", True),
                                                          ("topk_exposure", "sigmoid", False)])
def test_equals_the_loop_of_its_three_ops(device, weight_mode, utility, frozen, deterministic_algorithms):
    """Bit for bit what FairDual's per-batch path computes: signal op, weights, dual_mirror_step, bpr_adam_step (on
    CUDA in deterministic mode: bpr_adam_step's gradient sums are index_add_'s, with atomics otherwise)."""
    case = dict(S=4, B=6, M=2, num_users=7, num_items=15, Q=9, topk=3, dim=8, G=3, P=2, weight_mode=weight_mode,
                utility=utility, frozen=frozen, metric="weighted", target="remaining", s_min=0.0, lam=0.5, eta=0.5,
                alpha=0.3, mu0="random", reg_weight=0.1, sigmoid=True, seed=5)
    tensors, o = make_inputs(case, torch.float32, torch.float64, device)
    loop = [t.clone() for t in tensors]
    losses, weights = ops.fairdual_bpr_adam_step(*tensors, **o)
    (P, Q, *adam), (users, pos, neg), (mu, gmom, gamma), (sampled, gid, gw, rho, mhat) = (
        loop[:8], loop[8:11], loop[11:14], loop[14:])
    adam_args = dict(reg_weight=o["reg_weight"], sigmoid_scores=True, lr=o["lr"], beta1=o["beta1"], beta2=o["beta2"],
                     eps=o["eps"])
    for s in range(case["S"]):
        items = o["signal_items"] if frozen else Q
        _, _, consumed, per_row = ops.sampled_topk_group_stats(P[users[s]], items, sampled[s], o["topk"], gid, gw,
                                                               case["G"], utility, weight_mode == "topk_exposure")
        if weight_mode == "target_group":
            w = (1 - (gw[pos[s]].double() * mu[gid[pos[s]]]).sum(-1)).clamp(min=0.0)
        else:
            bw = (per_row * mu).mean(1)
            w = 1 - bw / bw.sum()
        assert torch.equal(weights[s], w.float())
        ops.dual_mirror_step(mu, gmom, gamma, consumed / (case["B"] * o["topk"]), o["batch_fraction"], rho, mhat,
                             o["lam"], o["eta"], o["alpha"])
        assert torch.equal(losses[s:s + 1], ops.bpr_adam_step(P, Q, *adam, users[s], pos[s], neg[s], w.float(),
                                                              **adam_args))
    for got, expected in zip(tensors, loop):
        assert torch.equal(got, expected)


def test_one_batch_without_the_s_dimension():
    case = dict(S=1, B=4, M=1, num_users=5, num_items=8, Q=6, topk=2, dim=2, G=2, P=1, weight_mode="target_group",
                utility="exposure", frozen=False, metric="euclid", target="constant", s_min=0.0, lam=1.0, eta=0.1,
                alpha=1.0, mu0=1.0, reg_weight=0.0, sigmoid=False, seed=1)
    tensors, o = make_inputs(case)
    flat = [t.clone() for t in tensors]
    flat[8:11] = [flat[8][0], flat[9][0], flat[10][0, :, 0]]
    flat[14] = flat[14][0]
    assert all(torch.equal(a, b) for a, b in zip(ops.fairdual_bpr_adam_step(*flat, **o),
                                                  ops.fairdual_bpr_adam_step(*tensors, **o)))


def test_topk_exposure_weights_are_one_when_mu_is_zero():
    """FairDiverse divides by Σbw unguarded; with μ = 0 (no slot has weight) fairlit's weights are 1, not NaN."""
    case = dict(S=1, B=3, M=1, num_users=4, num_items=6, Q=4, topk=2, dim=2, G=2, P=1, weight_mode="topk_exposure",
                utility="exposure", frozen=False, metric="weighted", target="remaining", s_min=0.0, lam=1.0, eta=1e-9,
                alpha=1.0, mu0=0.0, reg_weight=0.0, sigmoid=False, seed=2)
    tensors, o = make_inputs(case)
    _, weights = ops.fairdual_bpr_adam_step(*tensors, **o)
    assert torch.equal(weights, torch.ones(1, 3))


@pytest.mark.skipif(not HAS_OP, reason="opcheck needs the compiled library")
@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("frozen", [False, True])
def test_opcheck(device, frozen):
    case = dict(S=2, B=3, M=2, num_users=5, num_items=9, Q=6, topk=2, dim=4, G=3, P=2, weight_mode="topk_exposure",
                utility="sigmoid", frozen=frozen, metric="weighted", target="remaining", s_min=0.0, lam=1.0, eta=0.1,
                alpha=0.5, mu0="random", reg_weight=0.1, sigmoid=True, seed=3)
    tensors, o = make_inputs(case, torch.float32, device=device)
    args = schema_args(tensors, o, device)
    torch.library.opcheck(torch.ops.fairlit.fairdual_bpr_adam_step, args)


@pytest.mark.skipif(not HAS_OP, reason="the reference fallback differentiates with torch.autograd.grad, which "
                    "dynamo does not trace; the custom op is what must compile without a graph break")
def test_torch_compile_fullgraph_matches_eager():
    case = dict(S=2, B=4, M=1, num_users=5, num_items=9, Q=7, topk=3, dim=4, G=3, P=1, weight_mode="target_group",
                utility="exposure", frozen=False, metric="weighted", target="remaining", s_min=0.0, lam=1.0, eta=0.1,
                alpha=0.5, mu0="random", reg_weight=0.0, sigmoid=False, seed=4)
    eager, o = make_inputs(case)
    compiled_state = [t.clone() for t in eager]

    def step(*tensors):
        return ops.fairdual_bpr_adam_step(*tensors, **o, validate=False)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for got, want in zip(compiled(*compiled_state), step(*eager)):
        torch.testing.assert_close(got, want)
    for a, b in zip(compiled_state, eager):
        torch.testing.assert_close(a, b)


@pytest.mark.skipif(not HAS_OP, reason="the autograd kernel is C++")
def test_refuses_to_run_under_autograd():
    tensors, o = make_inputs(dict(S=1, B=2, M=1, num_users=3, num_items=4, Q=3, topk=1, dim=2, G=2, P=1,
                                  weight_mode="target_group", utility="exposure", frozen=False, metric="weighted",
                                  target="remaining", s_min=0.0, lam=1.0, eta=0.1, alpha=0.5, mu0=0.0,
                                  reg_weight=0.0, sigmoid=False, seed=0))
    args = list(schema_args(tensors, o))
    args[11].requires_grad_()
    with pytest.raises(RuntimeError, match="sequence of training steps .* torch.no_grad"):
        torch.ops.fairlit.fairdual_bpr_adam_step(*args)
    tensors[11].requires_grad_()
    ops.fairdual_bpr_adam_step(*tensors, **o)   # the public op runs under no_grad
    assert float(tensors[6]) == 4


def _call(validate=True, **change):
    case = dict(S=2, B=2, M=1, num_users=3, num_items=5, Q=4, topk=2, dim=2, G=2, P=1, weight_mode="target_group",
                utility="exposure", frozen=False, metric="weighted", target="remaining", s_min=0.0, lam=1.0, eta=0.1,
                alpha=0.5, mu0=0.0, reg_weight=0.0, sigmoid=False, seed=0)
    tensors, options = make_inputs(case)
    names = ("user_emb", "item_emb", "user_exp_avg", "user_exp_avg_sq", "item_exp_avg", "item_exp_avg_sq",
             "user_step", "item_step", "users", "pos", "neg", "mu", "gmom", "gamma", "sampled", "group_ids",
             "group_weights", "rho", "mhat")
    args = dict(zip(names, tensors))
    for key, value in change.items():
        (args if key in args else options)[key] = value
    return ops.fairdual_bpr_adam_step(*args.values(), **options, validate=validate)


@pytest.mark.parametrize("change, error, message", [
    (dict(sampled=torch.zeros(3, 4, dtype=torch.long)), ValueError, "`sampled` must be \\[S, Q\\] with S = 2"),
    (dict(sampled=torch.tensor([[0, 1, 2, 5], [0, 1, 2, 3]])), ValueError, "`sampled` contains item id 5"),
    (dict(sampled=torch.zeros(2, 4)), TypeError, "`sampled` must be an int64 tensor"),
    (dict(topk=5), ValueError, "`topk` \\(5\\) must be <= the number of sampled items Q = 4"),
    (dict(topk=0), ValueError, "`topk` must be an int >= 1"),
    (dict(weight_mode="code"), ValueError, "`weight_mode` must be one of"),
    (dict(utility="ndcg"), ValueError, "`utility` must be one of"),
    (dict(metric="l1"), ValueError, "`metric` must be one of"),
    (dict(lam=-1.0), ValueError, "`lam` must be >= 0"),
    (dict(eta=0.0), ValueError, "`eta` must be > 0"),
    (dict(batch_fraction=-0.1), ValueError, "`batch_fraction` must be finite and >= 0"),
    (dict(s_min=float("nan")), ValueError, "`s_min` must be a number"),
    (dict(mu=torch.zeros(2, dtype=torch.float16)), ValueError, "`mu` must be a \\[G\\] float32 or float64"),
    (dict(gmom=torch.zeros(3, dtype=torch.float64)), ValueError, "`gmom` must be \\[G\\] like `mu`"),
    (dict(mhat=torch.tensor([1.0, 0.0], dtype=torch.float64)), ValueError, "`mhat` must be > 0"),
    (dict(mu=torch.tensor([0.0, float("nan")], dtype=torch.float64)), ValueError, "`mu` contains NaN"),
    (dict(rho=torch.tensor([-1.0, 1.0], dtype=torch.float64)), ValueError, "`rho` must be >= 0"),
    (dict(group_ids=torch.zeros(4, 1, dtype=torch.long)), ValueError, "`group_ids` must be \\[I, P\\] with I = 5"),
    (dict(group_ids=torch.full((5, 1), 2)), ValueError, "`group_ids` contains group id 2"),
    (dict(signal_items=torch.zeros(4, 2, dtype=torch.float64)), ValueError, "`signal_items` must be shaped like"),
    (dict(users=torch.tensor([[0, 3], [0, 0]])), ValueError, "`users` contains user id 3"),
    (dict(neg=torch.zeros(2, 3, 1, dtype=torch.long)), ValueError, "`neg` must be"),
    (dict(lr=-1.0), ValueError, "`lr` must be >= 0"),
    (dict(eps=0.0), ValueError, "`eps` must be > 0"),
])
def test_bad_input_names_the_argument(change, error, message):
    with pytest.raises(error, match=message):
        _call(**change)


@pytest.mark.skipif(not HAS_OP, reason="kernel checks need the compiled library")
def test_kernel_checks_without_validation():
    with pytest.raises(RuntimeError, match="`sampled` contains item id 7"):
        _call(validate=False, sampled=torch.tensor([[0, 1, 2, 7], [0, 1, 2, 3]]))
    with pytest.raises(RuntimeError, match="`signal_items` must be shaped like `item_emb`"):
        _call(validate=False, signal_items=torch.zeros(4, 2, dtype=torch.float64))
    with pytest.raises(RuntimeError, match="`neg` contains id 9; expected ids in \\[0, 5\\)"):
        _call(validate=False, neg=torch.tensor([[[0], [1]], [[2], [9]]]))
