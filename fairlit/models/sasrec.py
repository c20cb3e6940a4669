"""SASRec: causal self-attention over the item history (Kang & McAuley, ICDM 2018; RecBole variant)."""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fairlit.models._common import SequentialItemL2, check_history, check_sizes, front_align, last_position


class _Block(nn.Module):
    """Post-LN Transformer block as RecBole's ``TransformerLayer`` (no dropout inside the FFN)."""

    def __init__(
        self, dim: int, num_heads: int, inner_size: int, dropout: float, attn_dropout: float, eps: float
    ) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, num_heads, dropout=attn_dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.ffn_in = nn.Linear(dim, inner_size)
        self.ffn_out = nn.Linear(inner_size, dim)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, causal_mask: Tensor) -> Tensor:
        """Map [B, H, d] to [B, H, d]; ``causal_mask`` [H, H] is True where attention is forbidden."""
        attended, _ = self.attn(x, x, x, attn_mask=causal_mask, need_weights=False)
        x = self.norm1(x + self.dropout(attended))
        return self.norm2(x + self.dropout(self.ffn_out(F.gelu(self.ffn_in(x)))))


class SASRec(SequentialItemL2, nn.Module):
    r"""Causal Transformer over the history; the last real position is the user vector.

    .. math::
        X^{(0)} = \mathrm{drop}(\mathrm{LN}(Q_{x_t} + P_t)), \qquad
        X^{(l)} = \mathrm{Block}(X^{(l-1)}; \text{mask } t' \le t), \qquad
        \hat y_i = \langle X^{(L)}_{\ell}, Q_i \rangle

    Q is shared between input and output. Item id ``num_items`` is the pad: its row is zero, frozen and
    not returned. Pads are moved behind the items before position ids 0..ℓ-1 are assigned (RecBole's
    right-padded layout), and the causal mask keeps real positions from attending to them, so padding
    never changes the output. Defaults are RecBole's; the FairDual spec uses ``num_layers=1, dim=32,
    inner_size=64``. Weights ~ N(0, init_std^2), biases 0, LayerNorm (1, 0), as in RecBole.

    Args:
        num_users: Number of user ids (unused: a user is its history).
        num_items: Number of item ids.
        dim: Hidden size d (= item embedding size).
        num_layers: Transformer blocks.
        num_heads: Attention heads (must divide d).
        inner_size: Feed-forward width.
        dropout: Dropout on embeddings and after each sub-layer.
        attn_dropout: Dropout on the attention weights.
        max_len: Longest history H accepted (size of the position table).
        layer_norm_eps: LayerNorm epsilon.
        init_std: Standard deviation of the normal initialisation.
    """

    dot_product = True

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int = 64,
        num_layers: int = 2,
        num_heads: int = 2,
        inner_size: int = 256,
        dropout: float = 0.5,
        attn_dropout: float = 0.5,
        max_len: int = 50,
        layer_norm_eps: float = 1e-12,
        init_std: float = 0.02,
    ) -> None:
        super().__init__()
        check_sizes("SASRec", num_items=num_items, dim=dim, num_heads=num_heads, inner_size=inner_size,
                    max_len=max_len)
        check_sizes("SASRec", 0, num_layers=num_layers)
        self.num_items = num_items
        self.dim = dim
        self.max_len = max_len
        self.item_embedding = nn.Embedding(num_items + 1, dim, padding_idx=num_items)
        self.position_embedding = nn.Embedding(max_len, dim)
        self.norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            _Block(dim, num_heads, inner_size, dropout, attn_dropout, layer_norm_eps)
            for _ in range(num_layers)
        )
        self._init_weights(init_std)

    @torch.no_grad()
    def _init_weights(self, std: float) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.normal_(std=std)
            if isinstance(module, nn.Linear) and module.bias is not None:
                module.bias.zero_()
            if isinstance(module, nn.MultiheadAttention):
                # Its q/k/v projections are one raw parameter, not nn.Linear modules.
                module.in_proj_weight.normal_(std=std)
                module.in_proj_bias.zero_()
        self.item_embedding.weight[self.num_items].zero_()  # the normal init overwrote the pad row

    def encode(self, users: Tensor, history: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Encode each history and return it with the item table.

        Args:
            users: LongTensor [B]; only its length is checked.
            history: LongTensor [B, H] of item ids, H <= ``max_len``, pad id ``num_items`` anywhere.

        Returns:
            ``(s [B, d], Q [I, d])`` with I = num_items (the pad row is dropped).

        Raises:
            ValueError: If ``history`` is None, not [B, H], or H > ``max_len``.
        """
        history, lengths = front_align(check_history(users, history), self.num_items)
        states = self.sequence_states(history)  # [B, H, d]
        return last_position(states, lengths), self.item_embedding.weight[: self.num_items]

    def sequence_states(self, history: Tensor) -> Tensor:
        """Causal hidden states of every position of an already front-aligned history.

        Args:
            history: LongTensor [B, H], items first and pads (``num_items``) after.

        Returns:
            Tensor [B, H, d]; position t depends only on ``history[:, :t + 1]``.

        Raises:
            ValueError: If H > ``max_len``.
        """
        length = history.shape[1]
        if length > self.max_len:
            raise ValueError(f"history length {length} exceeds max_len={self.max_len}")
        positions = torch.arange(length, device=history.device)
        x = self.dropout(self.norm(self.item_embedding(history) + self.position_embedding(positions)))
        causal_mask = torch.ones(length, length, dtype=torch.bool, device=history.device).triu(1)
        for block in self.blocks:
            x = block(x, causal_mask)
        return x
