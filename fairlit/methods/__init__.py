"""LightningModules: the shared base and one module per method."""
from fairlit.methods.base import RecModule
from fairlit.methods.bpr import BPR
from fairlit.methods.dpr import DPR
from fairlit.methods.fairdual import FairDual
from fairlit.methods.fairneg import FairNeg
from fairlit.methods.fairneg_reg import MeanScoreReg
from fairlit.methods.negative_sampling_baselines import DNS, NNCF, FairStatic
from fairlit.methods.reweighting_baselines import DRO, FOCF, SDRO, GroupVarReg, IFairLRS, Maxmin, Prop
from fairlit.methods.weighted import UNI, WeightedLoss

__all__ = ["BPR", "DRO", "FOCF", "SDRO", "UNI", "FairDual", "GroupVarReg", "IFairLRS", "Maxmin", "Prop",
           "RecModule", "WeightedLoss", "DNS", "NNCF", "FairNeg", "FairStatic", "MeanScoreReg", "DPR"]
