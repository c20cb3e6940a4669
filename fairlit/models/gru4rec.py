"""GRU4Rec: a GRU over the recent item history (Hidasi et al., ICLR 2016; RecBole variant)."""

import torch
from torch import Tensor, nn

from fairlit.models._common import SequentialItemL2, check_history, check_sizes, front_align, last_position


class GRU4Rec(SequentialItemL2, nn.Module):
    r"""Session encoder ``embedding -> dropout -> GRU -> dense``, read at the last real position.

    .. math::
        h_t = \mathrm{GRU}(\mathrm{drop}(Q_{x_t}), h_{t-1}), \qquad s = W h_{\ell} + b, \qquad
        \hat y_i = \langle s, Q_i \rangle

    The item table Q is shared between input and output (full-softmax CE over ``encode``'s items).
    Item id ``num_items`` is the pad: row ``num_items`` of the table is zero, frozen, and not returned.
    Layout and initialisation follow RecBole (bias-free GRU with ``xavier_uniform_`` weights,
    ``xavier_normal_`` embeddings).

    Args:
        num_users: Number of user ids (unused: a user is its history).
        num_items: Number of item ids.
        dim: Item embedding size d (also the output size).
        hidden_size: GRU state size.
        num_layers: GRU layers.
        dropout: Dropout on the input embeddings.
    """

    dot_product = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int = 64,
        hidden_size: int = 128,
        num_layers: int = 1,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        check_sizes("GRU4Rec", num_items=num_items, dim=dim, hidden_size=hidden_size, num_layers=num_layers)
        self.num_items = num_items
        self.dim = dim
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=num_items)
        self.emb_dropout = nn.Dropout(dropout)
        self.gru = nn.GRU(dim, hidden_size, num_layers=num_layers, bias=False, batch_first=True)
        self.dense = nn.Linear(hidden_size, dim)
        nn.init.xavier_normal_(self.item_embedding.weight)
        with torch.no_grad():
            self.item_embedding.weight[num_items].zero_()  # xavier overwrote the pad row
        for weight in self.gru.parameters():
            nn.init.xavier_uniform_(weight)

    def encode(self, users: Tensor, history: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encode each history and return it with the item table.

        Args:
            users: LongTensor [B]; only its length is checked.
            history: LongTensor [B, H] of item ids, pad id ``num_items`` anywhere (left padding is
                typical). Pads are moved behind the items first, so padding never changes the output.

        Returns:
            ``(s [B, d], Q [I, d])`` with I = num_items (the pad row is dropped).

        Raises:
            ValueError: If ``history`` is None or not [B, H].
        """
        history, lengths = front_align(check_history(users, history), self.num_items)
        states, _ = self.gru(self.emb_dropout(self.item_embedding(history)))  # [B, H, hidden]
        # Dense after the gather: it is per position, so only the last state needs it.
        return self.dense(last_position(states, lengths)), self.item_embedding.weight[: self.num_items]
