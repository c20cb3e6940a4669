"""NeuMF: generalised MF plus an MLP tower (He et al., "Neural Collaborative Filtering", WWW 2017)."""

import torch
from torch import Tensor, nn

from fairlit.models._common import check_sizes, embedding_l2


class NeuMF(nn.Module):
    r"""NeuMF as in the FADE code (``NCF.py``): not a dot product, so it scores (user, item) pairs.

    .. math::
        \hat y_{ui} = w^\top \begin{bmatrix} p^{mf}_u \odot q^{mf}_i \\
        \mathrm{MLP}([p^{mlp}_u; q^{mlp}_i]) \end{bmatrix} + b_u + b_i

    The MLP has ``num_mlp_layers`` bias-free ``Linear -> ReLU -> Dropout`` layers of width d
    (the first maps 2d -> d); w has no bias. Every embedding and linear weight ~ N(0, init_std^2).

    Args:
        num_users: Number of user ids.
        num_items: Number of item ids.
        dim: Size d of each embedding and of every MLP layer.
        num_mlp_layers: Depth of the MLP tower.
        dropout: Dropout after each MLP layer.
        init_std: Standard deviation of the normal initialisation.
    """

    dot_product = False

    def __init__(
        self,
        num_users: int,
        num_items: int,
        dim: int = 64,
        num_mlp_layers: int = 4,
        dropout: float = 0.0,
        init_std: float = 0.01,
    ) -> None:
        super().__init__()
        check_sizes("NeuMF", num_users=num_users, num_items=num_items, dim=dim)
        check_sizes("NeuMF", 0, num_mlp_layers=num_mlp_layers)
        self.dim = dim
        self.user_mf = nn.Embedding(num_users, dim)
        self.item_mf = nn.Embedding(num_items, dim)
        self.user_mlp = nn.Embedding(num_users, dim)
        self.item_mlp = nn.Embedding(num_items, dim)
        self.user_bias = nn.Embedding(num_users, 1)
        self.item_bias = nn.Embedding(num_items, 1)
        layers = []
        for k in range(num_mlp_layers):
            layers += [nn.Linear(2 * dim if k == 0 else dim, dim, bias=False), nn.ReLU(), nn.Dropout(dropout)]
        self.mlp = nn.Sequential(*layers)
        self.predict = nn.Linear(2 * dim, 1, bias=False)
        for module in self.modules():
            if isinstance(module, (nn.Embedding, nn.Linear)):
                nn.init.normal_(module.weight, std=init_std)

    def score(self, users: Tensor, items: Tensor) -> Tensor:
        """Score C candidate items per user.

        Args:
            users: LongTensor [B].
            items: LongTensor [B, C].

        Returns:
            Tensor [B, C] of logits.

        Raises:
            ValueError: If ``items`` is not [B, C] with B = len(users).
        """
        if items.dim() != 2 or items.shape[0] != users.shape[0]:
            raise ValueError(
                f"items must be [B, C] with B = len(users) = {users.shape[0]}; got {tuple(items.shape)}"
            )
        users = users[:, None].expand_as(items)  # [B, C]
        gmf = self.user_mf(users) * self.item_mf(items)  # [B, C, d]
        mlp = self.mlp(torch.cat([self.user_mlp(users), self.item_mlp(items)], dim=-1))  # [B, C, d]
        logits = self.predict(torch.cat([gmf, mlp], dim=-1)).squeeze(-1)  # [B, C]
        return logits + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)

    def regularization(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        r"""L2 on the batch's GMF and MLP embeddings, in RecBole's ``EmbLoss`` form.

        .. math::
            \mathcal{R} = \frac{1}{2B} \sum_{t \in \{mf,\, mlp\}} \sum_b \left(\lVert p^t_{u_b}\rVert^2
            + \lVert q^t_{i^+_b}\rVert^2 + \lVert q^t_{i^-_b}\rVert^2\right)

        The FADE code regularises through Adam's weight decay instead; this keeps the interface uniform.

        Args:
            users: LongTensor [B].
            pos: LongTensor [B].
            neg: LongTensor [B] or [B, K].

        Returns:
            Scalar tensor.
        """
        return embedding_l2(
            self.user_mf(users),
            self.item_mf(pos),
            self.item_mf(neg),
            self.user_mlp(users),
            self.item_mlp(pos),
            self.item_mlp(neg),
            batch_size=users.shape[0],
        )
