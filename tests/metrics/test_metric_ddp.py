"""Two CPU processes (gloo) each update with part of the users; the synced compute() equals one process."""

import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from metric_oracles import random_case

from fairlit.metrics import (
    GroupRecall,
    IntersectionalFairness,
    ItemGroupFairness,
    RankingMetrics,
    UserGroupFairness,
    hits_from_csr,
)

BATCH, NUM_ITEMS, CUT = 40, 30, 13  # uneven split: rank 0 gets 13 users, rank 1 gets 27


def _setup():
    case = random_case(7, BATCH, NUM_ITEMS, kmax=10)
    rng = np.random.default_rng(7)
    item_group = torch.tensor(rng.integers(0, 4, size=NUM_ITEMS))
    user_group = torch.tensor(rng.integers(0, 2, size=BATCH))
    metrics = {
        "ranking": RankingMetrics(ks=[5, 10]),
        "item": ItemGroupFairness(item_group, num_groups=4, ks=[5, 10], ratio=0.5),
        "user": UserGroupFairness(2, ks=[5, 10]),
        "group_recall": GroupRecall(item_group, 4, ks=[5, 10]),
        "itfr": IntersectionalFairness(2, item_group, 4, ks=[5, 10]),
    }
    return case, user_group, metrics


def _update(metrics, case, user_group, lo, hi):
    part = case.rows(lo, hi)
    hits = hits_from_csr(part.topk, part.indptr, part.indices)
    num_rel, ug = part.indptr.diff(), user_group[lo:hi]
    metrics["ranking"].update(hits, num_rel)
    metrics["item"].update(part.topk, part.scores_t)
    metrics["user"].update(hits, num_rel, ug)
    metrics["group_recall"].update(part.topk, hits, part.indptr, part.indices)
    metrics["itfr"].update(part.topk, hits, part.indptr, part.indices, ug)


def _worker(rank, world_size, port, path):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        case, user_group, metrics = _setup()
        lo, hi = (0, CUT) if rank == 0 else (CUT, BATCH)
        _update(metrics, case, user_group, lo, hi)
        results = {name: metric.compute() for name, metric in metrics.items()}
        if rank == 0:
            torch.save(results, path)
    finally:
        dist.destroy_process_group()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_process_sync_equals_single_process(tmp_path):
    path = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, _free_port(), str(path)), nprocs=2, join=True)
    synced = torch.load(path)
    case, user_group, metrics = _setup()
    _update(metrics, case, user_group, 0, BATCH)
    for name, metric in metrics.items():
        expected = metric.compute()
        assert set(synced[name]) == set(expected), name
        for key, value in expected.items():
            torch.testing.assert_close(synced[name][key], value, equal_nan=True, msg=f"{name}/{key}")
