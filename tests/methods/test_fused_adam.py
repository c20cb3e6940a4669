"""`FusedAdam`: its direct steps equal torch.optim.Adam(fused=True) bit for bit; other steps are Adam's own."""
import pytest
import torch

from fairlit.methods.base import FusedAdam


def _pair(weight_decay=0.01):
    torch.manual_seed(0)
    tables = [torch.randn(9, 4), torch.randn(13, 4)]
    a = [torch.nn.Parameter(t.clone()) for t in tables]
    b = [torch.nn.Parameter(t.clone()) for t in tables]
    return (a, torch.optim.Adam(a, lr=1e-2, weight_decay=weight_decay, fused=True),
            b, FusedAdam(b, lr=1e-2, weight_decay=weight_decay))


def _set_grads(params_a, params_b, gen, skip=None):
    for i, (a, b) in enumerate(zip(params_a, params_b)):
        grad = None if i == skip else torch.randn(a.shape, generator=gen)
        a.grad, b.grad = grad, None if grad is None else grad.clone()


def _assert_same(pa, opt_a, pb, opt_b):
    for a, b in zip(pa, pb):
        assert torch.equal(a, b)
        for key in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(opt_a.state[a][key], opt_b.state[b][key]), key


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_equals_fused_adam_bitwise_and_takes_the_direct_path(weight_decay, monkeypatch):
    pa, opt_a, pb, opt_b = _pair(weight_decay)
    gen = torch.Generator().manual_seed(1)
    full_steps = []
    adam_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", lambda self, closure=None: (full_steps.append(1),
                                                                              adam_step(self, closure))[1])
    for i in range(30):
        _set_grads(pa, pb, gen, skip=1 if i == 5 else None)     # a step without one table's gradient
        adam_step(opt_a)
        opt_b.step()
    _assert_same(pa, opt_a, pb, opt_b)
    assert len(full_steps) == 2    # the first step (no state yet) and the one with a missing gradient


def test_checkpoint_round_trip_continues_identically():
    pa, opt_a, pb, opt_b = _pair()
    gen = torch.Generator().manual_seed(2)
    for _ in range(5):
        _set_grads(pa, pb, gen)
        opt_a.step()
        opt_b.step()
    resumed_params = [torch.nn.Parameter(p.detach().clone()) for p in pb]
    resumed = FusedAdam(resumed_params, lr=1e-2, weight_decay=0.01)
    resumed.load_state_dict(opt_b.state_dict())
    for _ in range(5):
        _set_grads(pa, resumed_params, gen)
        opt_a.step()
        resumed.step()
    _assert_same(pa, opt_a, resumed_params, resumed)


def test_hooks_and_closures_still_run():
    _, _, pb, opt_b = _pair()
    calls = []
    opt_b.register_step_pre_hook(lambda opt, args, kwargs: calls.append("pre"))
    opt_b.register_step_post_hook(lambda opt, args, kwargs: calls.append("post"))
    for _ in range(3):
        for p in pb:
            p.grad = torch.ones_like(p)
        opt_b.step()
    assert calls == ["pre", "post"] * 3

    def closure():
        calls.append("closure")
        return torch.tensor(1.0)

    assert opt_b.step(closure).item() == 1.0 and calls[-2:] == ["closure", "post"]
