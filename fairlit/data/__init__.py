"""Data layer: RecBole atomic files, preprocessing, groups, splits, negative sampling, ``RecDataModule``."""

from fairlit.data.atomic import AtomicData, read_atomic, read_atomic_dir
from fairlit.data.builtin import BUILTINS, builtin_dir, load_dataset
from fairlit.data.datamodule import RecDataModule
from fairlit.data.groups import (
    age_groups,
    categorical_groups,
    genre_exclusive,
    genre_first,
    genre_multi,
    intersectional,
    quantile_groups,
)
from fairlit.data.loaders import EpochSampler, EvalUsers, TrainInteractions, histories
from fairlit.data.pipeline import Prepared, check_prepared, prepare
from fairlit.data.preprocess import binarize, check_columns, drop_duplicate_pairs, k_core, reindex
from fairlit.data.sampling import build_csr, csr_contains, csr_slice, sample_negatives
from fairlit.data.splits import (
    split_chrono_global,
    split_counts,
    split_leave_one_out,
    split_periods,
    split_random_ratio,
)

__all__ = [
    "BUILTINS",
    "AtomicData",
    "EpochSampler",
    "EvalUsers",
    "Prepared",
    "RecDataModule",
    "TrainInteractions",
    "age_groups",
    "binarize",
    "build_csr",
    "builtin_dir",
    "categorical_groups",
    "check_columns",
    "check_prepared",
    "csr_contains",
    "csr_slice",
    "drop_duplicate_pairs",
    "genre_exclusive",
    "genre_first",
    "genre_multi",
    "histories",
    "intersectional",
    "k_core",
    "load_dataset",
    "prepare",
    "quantile_groups",
    "read_atomic",
    "read_atomic_dir",
    "reindex",
    "sample_negatives",
    "split_chrono_global",
    "split_counts",
    "split_leave_one_out",
    "split_periods",
    "split_random_ratio",
]
