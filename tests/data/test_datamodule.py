import lightning as L
import numpy as np
import pytest
import torch

from fairlit.data import RecDataModule, csr_contains


def _pairs(users, items):
    return set(zip(users.tolist(), items.tolist()))


def _split_pairs(dm, name):
    part = dm.prepared.parts[("train", "valid", "test").index(name)]
    return _pairs(dm.prepared.user[part], dm.prepared.item[part])


def _rows(ptr, idx):
    return [sorted(idx[ptr[k]:ptr[k + 1]].tolist()) for k in range(len(ptr) - 1)]


def test_attributes_after_init(tiny):
    dm = RecDataModule(str(tiny), item_group="genre_multi", user_group="gender", seed=1)
    assert dm.num_users == 30 and dm.num_items == len(dm.prepared.item_tokens)
    assert dm.item_group.dtype == torch.long and dm.item_group.shape == (dm.num_items,)
    assert dm.user_group.shape == (30,) and dm.num_user_groups == 2
    indptr, indices, weights = dm.item_group_csr
    assert indptr.shape == (dm.num_items + 1,) and dm.num_item_groups == 5
    sums = torch.zeros(dm.num_items).index_add_(0, torch.repeat_interleave(torch.arange(dm.num_items),
                                                                            indptr.diff()), weights)
    torch.testing.assert_close(sums, torch.ones(dm.num_items))
    assert _pairs(dm.train_users, dm.train_items) == _split_pairs(dm, "train")
    ptr, idx = dm.train_csr
    assert ptr.shape == (31,) and int(ptr[-1]) == len(dm.train_users)  # generated pairs are distinct
    s = dm.stats()
    assert s["train"] + s["valid"] + s["test"] == s["interactions"] == s["raw_interactions"]
    assert "item groups:" in dm.describe()


def test_train_epoch_covers_train_once_and_negatives_are_negative(tiny):
    dm = RecDataModule(str(tiny), num_negatives=3, batch_size=16)
    batches = list(dm.train_dataloader())
    b = batches[0]
    assert set(b) == {"user", "pos", "neg"} and b["neg"].shape == (16, 3)
    assert all(v.dtype == torch.long for v in b.values())
    user = torch.cat([b["user"] for b in batches])
    pos = torch.cat([b["pos"] for b in batches])
    neg = torch.cat([b["neg"] for b in batches])
    assert sorted(zip(user.tolist(), pos.tolist())) == sorted(zip(dm.train_users.tolist(), dm.train_items.tolist()))
    assert not csr_contains(*dm.train_csr, user, neg, dm.num_items).any()
    assert not torch.equal(user, dm.train_users)  # shuffled


def test_epochs_deterministic_and_different(tiny):
    def epochs(dm):
        loader = dm.train_dataloader()
        out = []
        for epoch in (0, 1):
            loader.sampler.set_epoch(epoch)
            out.append(torch.cat([torch.cat([b["user"][:, None], b["pos"][:, None], b["neg"]], 1)
                                  for b in loader]))
        return out

    a, b = epochs(RecDataModule(str(tiny), seed=7)), epochs(RecDataModule(str(tiny), seed=7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], a[1])


def test_ranks_get_disjoint_shards(tiny):
    dm = RecDataModule(str(tiny))
    loader = dm.train_dataloader()
    shards = []
    for rank in (0, 1):
        sampler = type(loader.sampler)(loader.dataset, num_replicas=2, rank=rank, seed=3)
        sampler.set_epoch(4)
        shards.append(set(sampler))
    n = len(loader.dataset)
    assert shards[0] | shards[1] == set(range(n))
    assert len(shards[0] & shards[1]) <= n % 2  # DistributedSampler pads an odd total with one repeat


@pytest.mark.parametrize("exclude_valid", [True, False])
def test_eval_batches_match_naive(tiny, exclude_valid):
    dm = RecDataModule(str(tiny), eval_batch_size=7, user_group="age", exclude_valid_at_test=exclude_valid)
    train = _split_pairs(dm, "train")
    valid = _split_pairs(dm, "valid")
    for stage, loader in (("valid", dm.val_dataloader()), ("test", dm.test_dataloader())):
        target = _split_pairs(dm, stage)
        excluded = train | valid if (stage == "test" and exclude_valid) else train
        seen = []
        for b in loader:
            seen += b["user"].tolist()
            assert torch.equal(b["user_group"], dm.user_group[b["user"]])
            for u, t, e in zip(b["user"].tolist(), _rows(b["target_indptr"], b["target_indices"]),
                               _rows(b["exclude_indptr"], b["exclude_indices"])):
                assert t == sorted(i for uu, i in target if uu == u)
                assert e == sorted(i for uu, i in excluded if uu == u)
        assert seen == sorted({u for u, _ in target})  # exactly the users with a target item


def test_users_without_test_items_are_skipped(tmp_path, atomic_writer):
    folder = tmp_path / "loo"
    folder.mkdir()
    rows = [["a", "x", 1], ["a", "y", 2], ["a", "z", 3], ["b", "x", 1]]
    atomic_writer(folder / "loo.inter", ["user_id:token", "item_id:token", "timestamp:float"], rows)
    dm = RecDataModule(str(folder), split="leave_one_out")
    b = next(iter(dm.test_dataloader()))
    assert b["user"].tolist() == [0]  # user "b" has one row: train only, not evaluated
    assert b["target_indices"].tolist() == [2]


def test_sampled_candidates_avoid_all_positives(tiny):
    dm = RecDataModule(str(tiny), eval_protocol="pop10")
    positives = _pairs(torch.from_numpy(dm.prepared.user), torch.from_numpy(dm.prepared.item))
    for b in dm.test_dataloader():
        assert b["candidates"].shape == (len(b["user"]), 10)
        for u, row in zip(b["user"].tolist(), b["candidates"].tolist()):
            assert not any((u, i) in positives for i in row)


def test_history_matches_naive(tiny):
    h = 3
    dm = RecDataModule(str(tiny), history_length=h, batch_size=1000)
    prep, train = dm.prepared, dm.prepared.parts[0]
    b = next(iter(dm.train_dataloader()))
    pad = dm.history_pad_id
    assert pad == dm.num_items
    for u, i, hist in zip(b["user"].tolist(), b["pos"].tolist(), b["history"].tolist()):
        rows = sorted((prep.time[r], r) for r in train if prep.user[r] == u)
        ordered = [prep.item[r] for _, r in rows]
        k = ordered.index(i)
        expect = ordered[max(0, k - h):k]
        assert hist == [pad] * (h - len(expect)) + expect
    vb = next(iter(dm.val_dataloader()))
    for u, hist in zip(vb["user"].tolist(), vb["history"].tolist()):
        ordered = [prep.item[r] for _, r in sorted((prep.time[r], r) for r in train if prep.user[r] == u)]
        assert hist == [pad] * (h - len(ordered[-h:])) + ordered[-h:]


def test_groups_exclusive_and_popularity(tiny):
    dm = RecDataModule(str(tiny), item_group="genre_exclusive", item_group_genres=["Horror", "Sci-Fi"])
    item = dict(zip(*_item_table(tiny)))
    for tok, g in zip(dm.prepared.item_tokens, dm.item_group.tolist()):  # exactly one of the two genres
        hits = [x for x in ("Horror", "Sci-Fi") if x in item[tok]]
        assert hits == [("Horror", "Sci-Fi")[g]]
    pop = RecDataModule(str(tiny), item_group="popularity", num_quantile_groups=3)
    assert torch.bincount(pop.item_group).tolist() in ([14, 13, 13], [13, 14, 13], [13, 13, 14])


def _item_table(folder):
    lines = (folder / f"{folder.name}.item").read_text().splitlines()[1:]
    cells = [line.split("\t") for line in lines]
    return [c[0] for c in cells], [c[2].split() for c in cells]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"split_ratios": (1.0, 0.0, 0.0)}, ValueError, r"split_ratios=\[1\.0, 0\.0, 0\.0\]: expected three .* > 0"),
    ({"split_ratios": (0.8, 0.2)}, ValueError, r"split_ratios=\[0\.8, 0\.2\]: expected three"),
    ({"split_ratios": (0.8, -0.1, 0.3)}, ValueError, "split_ratios=.*ratios > 0"),
    ({"split_ratios": (0, 0, 0)}, ValueError, "split_ratios=.*ratios > 0"),
    ({"split_ratios": (0.8, float("nan"), 0.1)}, ValueError, "split_ratios=.*finite"),
    ({"user_group": "age", "age_edges": (50, 20)}, ValueError, r"age_edges=\[50, 20\]: .*strictly increasing"),
    ({"age_edges": (18, float("inf"))}, ValueError, "age_edges=.*finite"),
    ({"split": "temporal"}, ValueError, "not one of"),
    ({"eval_protocol": "top100"}, ValueError, "uniN"),
    ({"eval_protocol": "uni0"}, ValueError, "eval_protocol='uni0'.*N >= 1"),
    ({"eval_protocol": "uni1000"}, ValueError,
     r"eval_protocol='uni1000' draws 1000 .* only \d+ items to draw from \(the 40 items less its positives\)"),
    ({"eval_protocol": "pop1000"}, ValueError, "eval_protocol='pop1000'.*without a training interaction"),
    ({"item_group": "genre_first", "item_group_min_size": 100_000}, ValueError,
     r"item_group_min_size=100000 would merge every item group into one \(group sizes \{'Action'"),
    ({"item_group_min_size": -1}, ValueError, "item_group_min_size=-1"),
    ({"history_length": -5}, ValueError, "history_length=-5: expected .* >= 0"),
    ({"eval_batch_size": 0}, ValueError, "eval_batch_size=0: expected .* >= 1"),
    ({"num_negatives": 0}, ValueError, "num_negatives=0: expected .* >= 1"),
    ({"num_negatives": -1}, ValueError, "num_negatives=-1"),
    ({"seed": -1}, ValueError, "seed=-1: expected .* >= 0"),
    ({"negative_sampling": "popularity", "popularity_exponent": -1.0}, ValueError, "popularity_exponent=-1.0"),
    ({"popularity_exponent": float("nan")}, ValueError, "popularity_exponent=nan: expected a finite number"),
    ({"item_group": "popularity", "num_quantile_groups": 0}, ValueError, "num_quantile_groups=0"),
    ({"item_group": "popularity", "num_quantile_groups": 1000}, ValueError,
     "num_quantile_groups=1000: .* per item, and 40 items"),
    ({"user_group": "activity", "num_quantile_groups": 31}, ValueError, "num_quantile_groups=31: .* and 30 users"),
    ({"negative_sampling": "hard"}, ValueError, "negative_sampling"),
    ({"item_group": "genre_exclusive"}, ValueError, "needs item_group_genres"),
    ({"item_group": "genre_exclusive", "item_group_genres": ["Western"]}, ValueError, "Western.*not present"),
    ({"user_group": "zip_code"}, ValueError, "user_group"),
    ({"dataset": "does-not-exist"}, ValueError, "built-in"),
    # Python callers: values of the wrong type are named (the CLI's parser refuses them itself).
    ({"batch_size": "32"}, TypeError, r"batch_size='32' \(str\) does not fit its type <class 'int'>"),
    ({"batch_size": True}, TypeError, "batch_size=True"),
    ({"k_core": 2.5}, TypeError, "k_core=2.5"),
    ({"exclude_valid_at_test": "no"}, TypeError, "exclude_valid_at_test='no'"),
    ({"rating_threshold": "3"}, TypeError, "rating_threshold='3'"),
    ({"split_ratios": "0.8,0.1,0.1"}, TypeError, "split_ratios="),
    ({"item_group": "genre_exclusive", "item_group_genres": "Action"}, TypeError, "item_group_genres='Action'"),
])
def test_bad_options(tiny, kwargs, error, match):
    kwargs = {"dataset": str(tiny), **kwargs}
    with pytest.raises(error, match=match):
        RecDataModule(**kwargs)


def test_bad_files(tiny, atomic_writer):
    (tiny / "tiny.user").write_text("user_id:token\tgender:token\nu1\tM\n")
    with pytest.raises(ValueError, match=r"tiny\.user: missing column 'age'"):
        RecDataModule(str(tiny), user_group="age")
    with pytest.raises(ValueError, match=r"tiny\.user: no 'gender' value for 29 id"):
        RecDataModule(str(tiny), user_group="gender")
    atomic_writer(tiny / "tiny.inter", ["user_id:token", "item_id:token", "rating:float"],
                  [["u1", "i1", ""], ["u2", "i1", "4"]])
    with pytest.raises(ValueError, match=r"tiny\.inter: column 'rating' has 1 missing"):
        RecDataModule(str(tiny), rating_threshold=3)
    with pytest.raises(ValueError, match=r"tiny\.inter: missing column 'timestamp'"):
        RecDataModule(str(tiny), split="chrono")


def test_user_group_without_evaluated_users_warns(tmp_path, atomic_writer):
    # chrono 8:1:1 over 4 rows: user a's two rows train, user b's next rows are the valid and the test row.
    folder = tmp_path / "two"
    folder.mkdir()
    atomic_writer(folder / "two.inter", ["user_id:token", "item_id:token", "timestamp:float"],
                  [["a", "x", 1], ["a", "y", 2], ["b", "x", 3], ["b", "z", 4]])
    atomic_writer(folder / "two.user", ["user_id:token", "gender:token"], [["a", "M"], ["b", "F"]])
    with pytest.warns(UserWarning) as record:
        RecDataModule(str(folder), split="chrono", user_group="gender")
    assert [str(w.message) for w in record] == [
        f"user group(s) ['M'] have no evaluated user in the {s} split: their per-group {s} metrics will be NaN"
        for s in ("valid", "test")]


class _Recorder(L.LightningModule):
    """Records the negatives of every epoch and the users of every validation batch."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.negs, self.val_users = {}, []

    def training_step(self, batch, batch_idx):
        self.negs.setdefault(self.current_epoch, []).append(batch["neg"])
        return (self.w * batch["neg"].float().mean()).sum()

    def validation_step(self, batch, batch_idx):
        self.val_users.append(batch["user"])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_lightning_fit_redraws_each_epoch(tiny):
    runs = []
    for _ in range(2):
        model, dm = _Recorder(), RecDataModule(str(tiny), batch_size=64, seed=11)
        L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                  enable_progress_bar=False, enable_model_summary=False).fit(model, dm)
        runs.append({e: torch.cat(v) for e, v in model.negs.items()})
        assert sorted(torch.cat(model.val_users).unique().tolist()) == dm._eval_users("valid").tolist()
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    assert not torch.equal(runs[0][0], runs[0][1])
    np.testing.assert_equal(runs[0][0].shape[0], len(dm.train_users))


# ----------------------------------------------------------------------------------------- from_prepared
def _batches(loader):
    return [{k: v.clone() for k, v in b.items()} for b in loader]


def test_from_prepared_equals_the_module_it_came_from(tiny):
    options = dict(num_negatives=2, batch_size=16, eval_protocol="uni10", history_length=3, seed=7)
    dm = RecDataModule(str(tiny), item_group="genre_multi", split="chrono", **options)
    again = RecDataModule.from_prepared(dm.prepared, **options)
    assert again.stats() == dm.stats() and again.hparams.dataset is None
    for a, b in zip(dm.item_group_csr, again.item_group_csr):
        assert torch.equal(a, b)
    for name in ("train_dataloader", "val_dataloader", "test_dataloader"):
        left, right = _batches(getattr(dm, name)()), _batches(getattr(again, name)())
        assert len(left) == len(right) > 0
        assert all(a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a) for a, b in zip(left, right))


def test_from_prepared_keeps_ids_items_without_rows_and_splits_as_given():
    from fairlit.data import Prepared

    # 3 users, 6 items (item 5 has no row: it can only be a negative), one group per item, no CSR given.
    user = np.array([0, 0, 1, 1, 2, 2, 0, 1, 2])
    item = np.array([0, 1, 1, 2, 3, 4, 2, 3, 0])
    prep = Prepared(user=user, item=item, time=np.arange(9.0), user_tokens=np.arange(3), item_tokens=np.arange(6),
                    parts=[np.arange(6), np.array([6, 7]), np.array([8])], item_group=np.array([0, 1, 0, 1, 0, 1]),
                    item_group_names=["a", "b"])
    with pytest.warns(UserWarning, match=r"item group\(s\) \['b'\] have no target item in the test split: .* NaN"):
        dm = RecDataModule.from_prepared(prep, num_negatives=4, batch_size=6, seed=0)
    assert (dm.num_users, dm.num_items, dm.num_item_groups) == (3, 6, 2)
    assert _pairs(dm.train_users, dm.train_items) == _pairs(user[:6], item[:6])
    indptr, indices, weights = dm.item_group_csr
    assert torch.equal(indptr, torch.arange(7)) and torch.equal(indices, dm.item_group) and bool((weights == 1).all())
    batches = list(dm.train_dataloader())
    negatives = torch.cat([b["neg"] for b in batches])                             # [6, 4]
    assert 5 in negatives.flatten().tolist()            # the item with no row is part of the item universe
    users = torch.cat([b["user"] for b in batches]).repeat_interleave(4)
    assert not csr_contains(*dm.train_csr, users, negatives.flatten(), dm.num_items).any()
    (test,) = list(dm.test_dataloader())
    assert test["user"].tolist() == [2] and test["target_indices"].tolist() == [0]


@pytest.mark.parametrize(("change", "error", "match"), [
    ({"item": np.array([0, 1, 1, 9])}, ValueError, r"Prepared.item: ids must lie in \[0, 6\)"),
    ({"user": np.array([0.0, 0.0, 1.0, 1.0])}, ValueError, "Prepared.user: expected a 1-D integer array"),
    ({"time": np.arange(3.0)}, ValueError, "Prepared.time: expected a 1-D numeric array of length 4"),
    ({"time": np.array([0, 1, np.nan, 3])}, ValueError, r"Prepared.time: expected finite .* NaN/inf \(first at row 2"),
    ({"parts": [np.array([0, 1]), np.array([], dtype=np.int64), np.array([2, 3])]}, ValueError, "valid part is empty"),
    ({"parts": [np.array([0, 1]), np.array([2]), np.array([3, 4])]}, ValueError, r"parts\[test\]"),
    ({"parts": [np.array([0, 1, 2]), np.array([2]), np.array([3])]}, ValueError,
     r"Prepared.parts: row 2 is listed more than once, in \['train', 'valid'\]; expected disjoint"),
    ({"item_group": np.array([0, 1, 0])}, ValueError, "Prepared.item_group: expected a 1-D integer array of length 6"),
    ({"item_group": np.array([0, 1, 0, 1, 0, 2])}, ValueError, r"Prepared.item_group: ids must lie in \[0, 2\)"),
    ({"item_group": np.array([0.0, 1.0, 0.0, 1.0, 0.0, 0.5])}, ValueError, "Prepared.item_group: .* integer array"),
    ({"item_group": np.zeros(6, dtype=np.int64)}, ValueError, r"Prepared.item_group: item group\(s\) \['b'\] have no"),
    ({"user_group": np.array([0, 0]), "user_group_names": ["F", "M"]}, ValueError,
     r"Prepared.user_group: user group\(s\) \['M'\] have no user"),
    ({"item_group_csr": (np.arange(7), np.array([0, 1, 0, 1, 0, 1]), np.array([np.nan, 1, 1, 1, 1, 1]))},
     ValueError, "Prepared.item_group_csr: expected finite weights >= 0, got 1 that are not, e.g. nan"),
    ({"item_group_csr": (np.arange(7), np.array([0, 1, 0, 1, 0, 1]), np.array([1, -1.0, 1, 1, 1, 1]))},
     ValueError, "Prepared.item_group_csr: expected finite weights >= 0, got 1 that are not, e.g. -1.0"),
    ({"item_group_csr": (np.arange(7), np.array([0, 1, 0, 1, 0, 5]), np.ones(6))}, ValueError,
     r"Prepared.item_group_csr indices: ids must lie in \[0, 2\)"),
    ({"item_group_csr": (np.array([0, 2, 1, 3, 4, 5, 6]), np.array([0, 1, 0, 1, 0, 1]), np.ones(6))}, ValueError,
     "Prepared.item_group_csr: expected 7 non-decreasing integer offsets"),
    ({"item_group_csr": (np.arange(7), np.zeros(6, dtype=np.int64), np.ones(6))}, ValueError,
     r"Prepared.item_group_csr: item group\(s\) \['b'\] have no item"),
])
def test_from_prepared_rejects_inconsistent_data(change, error, match):
    from fairlit.data import Prepared

    base = dict(user=np.array([0, 0, 1, 1]), item=np.array([0, 1, 1, 2]), time=np.arange(4.0),
                user_tokens=np.arange(2), item_tokens=np.arange(6),
                parts=[np.array([0, 1]), np.array([2]), np.array([3])], item_group=np.array([0, 1, 0, 1, 0, 1]),
                item_group_names=["a", "b"])
    with pytest.raises(error, match=match):
        RecDataModule.from_prepared(Prepared(**(base | change)))


def test_from_prepared_refuses_preprocessing_and_bad_loader_options(tiny):
    prep = RecDataModule(str(tiny)).prepared
    with pytest.raises(TypeError, match=r"\['k_core', 'split'\] are not loader arguments"):
        RecDataModule.from_prepared(prep, k_core=5, split="chrono")
    with pytest.raises(ValueError, match="batch_size"):
        RecDataModule.from_prepared(prep, batch_size=0)
