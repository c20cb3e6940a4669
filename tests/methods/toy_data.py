"""The tiny RecBole atomic-file dataset the method tests train on."""
from collections.abc import Callable
from pathlib import Path

import numpy as np


def write_toy_dataset(root: Path, num_users: int, num_items: int, per_user: int, seed: int,
                      genres_of: Callable[[np.random.Generator, int], str]) -> Path:
    """Write `root/toy/toy.{inter,item}`: every user rates `per_user` random items (all positives, rating 5,
    random timestamps); item i gets the space-separated genres `genres_of(rng, i)`, drawn after the ratings."""
    rng = np.random.default_rng(seed)
    folder = root / "toy"
    folder.mkdir()
    rows = [f"u{u}\ti{i}\t5\t{rng.integers(0, 10**6)}" for u in range(num_users)
            for i in rng.choice(num_items, per_user, replace=False)]
    (folder / "toy.inter").write_text("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                                      + "\n".join(rows) + "\n")
    items = [f"i{i}\t{genres_of(rng, i)}" for i in range(num_items)]
    (folder / "toy.item").write_text("item_id:token\tgenre:token_seq\n" + "\n".join(items) + "\n")
    return folder
