"""BPR-MF: matrix factorisation scored by an inner product (Rendle et al., UAI 2009)."""

from torch import Tensor, nn

from fairlit.models._common import check_sizes, embedding_l2


class MF(nn.Module):
    r"""Matrix factorisation without biases, :math:`\hat y_{ui} = \langle P_u, Q_i \rangle`.

    By default the parameters and initialisation are RecBole's ``BPR`` (``xavier_normal_`` on both
    tables), so BPR training reproduces RecBole's numbers.

    Args:
        num_users: Number of user ids.
        num_items: Number of item ids.
        dim: Embedding size d.
        init_std: If set, initialise from N(0, init_std^2) instead, as the FADE and FairDual code do
            (0.01).
    """

    dot_product = True

    def __init__(self, num_users: int, num_items: int, dim: int = 64, init_std: float | None = None) -> None:
        super().__init__()
        check_sizes("MF", num_users=num_users, num_items=num_items, dim=dim)
        self.dim = dim
        self.user_embedding = nn.Embedding(num_users, dim)
        self.item_embedding = nn.Embedding(num_items, dim)
        for table in (self.user_embedding, self.item_embedding):
            if init_std is None:
                nn.init.xavier_normal_(table.weight)
            else:
                nn.init.normal_(table.weight, std=init_std)

    def encode(self, users: Tensor, history: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Return the batch's user vectors and the full item table.

        Args:
            users: LongTensor [B].
            history: Unused; accepted for a uniform backbone interface.

        Returns:
            ``(P[users] [B, d], Q [I, d])``; the score of (b, i) is their dot product.
        """
        return self.user_embedding(users), self.item_embedding.weight

    def regularization(self, users: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
        r"""L2 on the batch's embeddings.

        .. math::
            \mathcal{R} = \frac{1}{2B} \sum_b \left(\lVert P_{u_b}\rVert^2 + \lVert Q_{i^+_b}\rVert^2
            + \lVert Q_{i^-_b}\rVert^2\right)

        Args:
            users: LongTensor [B].
            pos: LongTensor [B] of positive items.
            neg: LongTensor [B] or [B, K] of negative items.

        Returns:
            Scalar tensor (RecBole ``EmbLoss(require_pow=True)``).
        """
        return embedding_l2(
            self.user_embedding(users),
            self.item_embedding(pos),
            self.item_embedding(neg),
            batch_size=users.shape[0],
        )
