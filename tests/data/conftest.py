"""Tiny generated RecBole atomic datasets for the data-layer tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

GENRES = ("Action", "Comedy", "Drama", "Horror", "Sci-Fi")


def write_atomic(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """Write one atomic file: a ``name:type`` header line and tab-separated rows."""
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_dataset(root: Path, name: str = "tiny", num_users: int = 30, num_items: int = 40,
                 per_user: tuple[int, int] = (4, 20), seed: int = 0) -> Path:
    """Write ``root/name/{name}.inter,.user,.item`` with random ratings, times, demographics and genres.

    Ids are strings like ``u7``/``i12`` (so re-indexing is exercised); every user has ``per_user`` distinct
    items; items get 1-3 genres from :data:`GENRES`.

    Returns:
        The dataset folder.
    """
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True)
    inter = []
    for u in range(num_users):
        items = rng.choice(num_items, size=rng.integers(*per_user, endpoint=True), replace=False)
        inter += [[f"u{u}", f"i{i}", int(rng.integers(1, 6)), int(rng.integers(0, 10_000))] for i in items]
    write_atomic(folder / f"{name}.inter",
                 ["user_id:token", "item_id:token", "rating:float", "timestamp:float"], inter)
    users = [[f"u{u}", int(rng.integers(10, 70)), "MF"[u % 2], ("artist", "writer", "other")[u % 3]]
             for u in range(num_users)]
    write_atomic(folder / f"{name}.user", ["user_id:token", "age:float", "gender:token", "occupation:token"],
                 users)
    items = [[f"i{i}", f"Movie {i}", " ".join(rng.choice(GENRES, size=rng.integers(1, 4), replace=False))]
             for i in range(num_items)]
    write_atomic(folder / f"{name}.item", ["item_id:token", "movie_title:token_seq", "genre:token_seq"], items)
    return folder


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """Folder of a 30-user / 40-item generated dataset."""
    return make_dataset(tmp_path)


@pytest.fixture
def atomic_writer():
    """:func:`write_atomic`, as a fixture (test modules here are not a package, so they cannot import it)."""
    return write_atomic


@pytest.fixture
def dataset_maker():
    """:func:`make_dataset`, as a fixture."""
    return make_dataset
