"""RecModule's ranking: full ranking and the sampled protocol (targets ranked among sampled negatives)."""
import pytest
import torch
from torch import nn

from fairlit.methods import RecModule
from fairlit.methods.base import check_number


class ScoreIsItemId(nn.Module):
    """Every user scores item i as i: the ranking is known by hand."""

    dot_product = True

    def __init__(self, num_users, num_items):
        super().__init__()
        self.items = nn.Parameter(torch.arange(num_items, dtype=torch.float32).unsqueeze(1))

    def encode(self, users, history=None):
        return torch.ones(len(users), 1), self.items


def _batch(**extra):
    batch = {"user": torch.tensor([0, 1]), "exclude_indptr": torch.tensor([0, 1, 1]),
             "exclude_indices": torch.tensor([8]), "target_indptr": torch.tensor([0, 2, 3]),
             "target_indices": torch.tensor([9, 1, 5])}
    return {**batch, **extra}


def test_full_ranking_excludes_the_rows_exclusions():
    module = RecModule(ScoreIsItemId, num_users=2, num_items=10, ks=[3])
    _, items = module.rank(_batch(), 3)
    assert items.tolist() == [[9, 7, 6], [9, 8, 7]]


def test_sampled_protocol_ranks_targets_among_negatives_without_duplicates():
    module = RecModule(ScoreIsItemId, num_users=2, num_items=10, ks=[3])
    values, items = module.rank(_batch(candidates=torch.tensor([[0, 2, 3], [4, 6, 7]])), 3)
    # row 0: {9, 1} + {0, 2, 3}; row 1: {5} (+ one padding copy of 4) + {4, 6, 7}
    assert items.tolist() == [[9, 3, 2], [7, 6, 5]]
    assert values.tolist() == [[9.0, 3.0, 2.0], [7.0, 6.0, 5.0]]
    _, items = module.rank(_batch(candidates=torch.tensor([[0, 2, 3], [4, 6, 7]])), 6)
    assert items.tolist() == [[9, 3, 2, 1, 0, -1], [7, 6, 5, 4, -1, -1]]


@pytest.mark.parametrize("kwargs, message", [
    (dict(eval_item_chunk=0), "eval_item_chunk must be >= 1 items, got 0"),
    (dict(lr=float("nan")), "lr must be a finite number > 0, got nan"),
    (dict(weight_decay=-1.0), "weight_decay must be a finite number >= 0, got -1.0"),
])
def test_bad_arguments_are_refused_by_name(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RecModule(ScoreIsItemId, num_users=2, num_items=10, **kwargs)


@pytest.mark.parametrize("value, bounds, message", [
    (0.5, dict(low=0, high=1), None), (1.0, dict(low=0, high=1), None), (0.0, dict(low=0), None),
    (1.0, dict(low=0, high=1, high_open=True), r"x must be a finite number in \[0, 1\), got 1.0"),
    (0.0, dict(low=0, low_open=True), "x must be a finite number > 0, got 0.0"),
    (float("nan"), dict(), "x must be a finite number, got nan"),
    (float("-inf"), dict(high=3), "x must be a finite number <= 3, got -inf"),
    (True, dict(), "x must be a finite number, got True"), ("1", dict(low=0), "x must be a finite number >= 0, got '1'"),
])
def test_check_number(value, bounds, message):
    if message is None:
        check_number("x", value, **bounds)
    else:
        with pytest.raises(ValueError, match=message):
            check_number("x", value, **bounds)
