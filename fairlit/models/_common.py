"""Helpers shared by the backbones: size checks, RecBole's embedding L2 term and history alignment."""

import torch
from torch import Tensor


def check_sizes(backbone: str, minimum: int = 1, **sizes: int) -> None:
    """Raise a ValueError naming the first of `sizes` (a backbone's size arguments, e.g. ``dim=64``) that is not
    an integer >= `minimum`: a zero or negative width would build empty tables or fail inside torch."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{backbone}: `{name}` must be an integer >= {minimum}, got {value!r}")


def embedding_l2(*embeddings: Tensor, batch_size: int, squared: bool = True) -> Tensor:
    r"""L2 penalty on a batch of embeddings, as RecBole's ``EmbLoss``.

    .. math::
        \mathcal{R} = \frac{1}{2B} \sum_{e} \lVert E_e \rVert_F^2 \quad (\text{squared, } require\_pow=True),
        \qquad \mathcal{R} = \frac{1}{B} \sum_{e} \lVert E_e \rVert_F \quad (require\_pow=False)

    RecBole divides by the batch size and, when squaring, by the norm order (2); the 1/2 also matches the
    original LightGCN code (``l2_loss = sum(e**2) / 2``). RecBole's LightGCN runs with its global default
    ``require_pow: False``, i.e. the unsquared Frobenius norms.

    Args:
        *embeddings: Tensors [B, ..., d] of the embeddings looked up for the batch.
        batch_size: B, the number of training triples (not the number of negatives).
        squared: squared norms / 2B (True) or plain norms / B (False).

    Returns:
        Scalar tensor.
    """
    if squared:
        return sum(e.pow(2).sum() for e in embeddings) / (2 * batch_size)
    return sum(e.norm() for e in embeddings) / batch_size


def front_align(history: Tensor, pad_id: int) -> tuple[Tensor, Tensor]:
    """Move the non-pad ids of each row to the front, in order, and count them.

    Sequential models read positions ``0..len-1`` (RecBole's right-padded layout), so left padding,
    extra padding or a longer H give the same representation.

    Args:
        history: LongTensor [B, H] of item ids, pad id ``pad_id`` anywhere.
        pad_id: The padding id.

    Returns:
        ``(aligned, lengths)``: LongTensor [B, H] with the pads at the end, and LongTensor [B].
    """
    is_pad = history == pad_id
    # A stable sort of the 0/1 pad flags keeps the items' order and pushes pads to the end.
    order = torch.sort(is_pad.to(torch.uint8), dim=1, stable=True).indices
    return history.gather(1, order), (~is_pad).sum(dim=1)


def check_history(users: Tensor, history: Tensor | None) -> Tensor:
    """Validate the history argument of a sequential backbone.

    Args:
        users: LongTensor [B]; only its length is used.
        history: LongTensor [B, H] or None.

    Returns:
        ``history`` unchanged.

    Raises:
        ValueError: If ``history`` is None, not 2-D, or its batch size differs from ``users``.
    """
    if history is None:
        raise ValueError("sequential backbones need `history` [B, H] of item ids (pad id = num_items)")
    if history.dim() != 2 or history.shape[0] != users.shape[0]:
        raise ValueError(
            f"history must be [B, H] with B = len(users) = {users.shape[0]}; got {tuple(history.shape)}"
        )
    return history


def last_position(states: Tensor, lengths: Tensor) -> Tensor:
    """Gather each row's state at its last real position (RecBole's ``gather_indexes``).

    Args:
        states: Tensor [B, H, d] over the front-aligned history.
        lengths: LongTensor [B] of real items per row.

    Returns:
        Tensor [B, d]. An empty history reads position 0 (the pad), i.e. an empty-sequence state.
    """
    index = (lengths - 1).clamp(min=0).view(-1, 1, 1).expand(-1, 1, states.shape[-1])
    return states.gather(1, index).squeeze(1)


class SequentialItemL2:
    """Shared by the sequential backbones (GRU4Rec, SASRec): a user is its history (``sequential = True``, no
    user embeddings), so the regularisation covers item embeddings only."""

    sequential = True

    def regularization(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        r"""L2 on the batch's item embeddings, :math:`(\lVert Q_{i^+}\rVert^2 + \lVert Q_{i^-}\rVert^2) / 2B`.

        Args:
            users: LongTensor [B]; only its length is used (users have no embedding).
            pos: LongTensor [B].
            neg: LongTensor [B] or [B, K].

        Returns:
            Scalar tensor (RecBole ``EmbLoss(require_pow=True)``).
        """
        return embedding_l2(self.item_embedding(pos), self.item_embedding(neg), batch_size=users.shape[0])
