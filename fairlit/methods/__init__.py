"""LightningModules: the shared base and one module per method."""
from fairlit.methods.base import RecModule
from fairlit.methods.bpr import BPR

__all__ = ["BPR", "RecModule"]
