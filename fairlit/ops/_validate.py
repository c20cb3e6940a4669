"""Argument checks shared by the public ops: errors name the argument and what was expected.

Value checks (id ranges, NaN) read the data, which costs a host sync on CUDA; they are skipped with
`validate=False` and while `torch.compile` traces (shape and dtype checks still run there).
"""
import torch


def _reads_values() -> bool:
    return not torch.compiler.is_compiling()


def floating(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"`{name}` must be a floating tensor (float16/bfloat16/float32/float64), got {t.dtype}")


def index(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"`{name}` must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype != torch.int64:
        raise TypeError(f"`{name}` must be an int64 tensor, got {t.dtype}")


def same_device(*named: tuple[str, torch.Tensor]) -> None:
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.device != first.device:
            raise ValueError(f"`{name}` is on {t.device} but `{first_name}` is on {first.device}")


def same_dtype(*named: tuple[str, torch.Tensor]) -> None:
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"`{name}` has dtype {t.dtype} but `{first_name}` has {first.dtype}")


def ndim(name: str, t: torch.Tensor, allowed: tuple[int, ...], shape_doc: str) -> None:
    if t.dim() not in allowed:
        raise ValueError(f"`{name}` must be {shape_doc}, got shape {tuple(t.shape)}")


def embeddings(user_emb: torch.Tensor, item_emb: torch.Tensor, user_doc: str = "[B, d]",
               item_doc: str = "[I, d]") -> None:
    """A pair of embedding tables: floating, 2-D, one dtype and device, the same width d."""
    floating("user_emb", user_emb)
    floating("item_emb", item_emb)
    ndim("user_emb", user_emb, (2,), user_doc)
    ndim("item_emb", item_emb, (2,), item_doc)
    same_dtype(("user_emb", user_emb), ("item_emb", item_emb))
    same_device(("user_emb", user_emb), ("item_emb", item_emb))
    if user_emb.shape[1] != item_emb.shape[1]:
        raise ValueError(f"`user_emb` has dim {user_emb.shape[1]} but `item_emb` has dim {item_emb.shape[1]}")


def numbers(*checks: tuple[str, object, bool, str]) -> None:
    """Python-number arguments: each ``(name, value, ok, doc)`` with ``ok`` false raises (NaN compares false,
    so a NaN value is rejected too)."""
    for name, value, ok, doc in checks:
        if not ok:
            raise ValueError(f"`{name}` must be {doc}, got {value!r}")


def positive_int(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1, got {value!r}")


def id_range(name: str, ids: torch.Tensor, upper: int, what: str) -> None:
    """Raise unless every id lies in [0, upper)."""
    if ids.numel() == 0 or not _reads_values():
        return
    bad = (ids < 0) | (ids >= upper)
    if bool(bad.any()):
        first = ids[bad][0].item()
        raise ValueError(f"`{name}` contains {what} {first}; expected ids in [0, {upper})")


def finite(name: str, t: torch.Tensor) -> None:
    """Reject NaN and ±inf (a diverged model): inf embeddings give NaN scores (inf * 0, inf - inf)."""
    if t.numel() and _reads_values() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"`{name}` contains {'NaN' if bool(torch.isnan(t).any()) else 'inf'}")


def non_negative(name: str, t: torch.Tensor) -> None:
    """Reject NaN, ±inf and values < 0 (weights, budget shares)."""
    finite(name, t)
    if t.numel() and _reads_values() and bool((t < 0).any()):
        raise ValueError(f"`{name}` must be >= 0, got min {t.min().item()!r}")


def unit_interval(name: str, t: torch.Tensor) -> None:
    """Reject values outside [0, 1] (NaN and ±inf included): fractions."""
    non_negative(name, t)
    if t.numel() and _reads_values() and bool((t > 1).any()):
        raise ValueError(f"`{name}` must be in [0, 1], got max {t.max().item()!r}")


def csr(indptr_name: str, indptr: torch.Tensor, indices_name: str, indices: torch.Tensor, rows: int, rows_doc: str,
        cols: int, what: str, validate: bool) -> None:
    """Check a CSR structure of `rows` rows whose column ids (`what`) lie in [0, cols)."""
    index(indptr_name, indptr)
    index(indices_name, indices)
    if indptr.shape != (rows + 1,):
        raise ValueError(f"`{indptr_name}` must be [{rows_doc}] = [{rows + 1}], got {tuple(indptr.shape)}")
    ndim(indices_name, indices, (1,), "[nnz]")
    if validate and _reads_values():
        id_range(indices_name, indices, cols, what)
        if int(indptr[0]) != 0 or int(indptr[-1]) != indices.numel() or bool((indptr.diff() < 0).any()):
            raise ValueError(f"`{indptr_name}` must be non-decreasing, start at 0 and end at "
                             f"len({indices_name}) = {indices.numel()}")
