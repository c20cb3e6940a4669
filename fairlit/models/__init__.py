"""Recommendation backbones: plain ``nn.Module`` s with the ``encode`` / ``score`` contract.

Dot-product backbones (``dot_product = True``) implement ``encode(users, history) -> (user_vecs [B, d],
item_vecs [I, d])``; NeuMF (``dot_product = False``) implements ``score(users [B], items [B, C])``.
All implement ``regularization(users, pos, neg)`` and expose ``dim``.
"""

from fairlit.models.gru4rec import GRU4Rec
from fairlit.models.lightgcn import LightGCN
from fairlit.models.mf import MF
from fairlit.models.ncf import NeuMF
from fairlit.models.sasrec import SASRec

__all__ = ["GRU4Rec", "LightGCN", "MF", "NeuMF", "SASRec"]
