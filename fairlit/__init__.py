"""fairlit: fairness-aware recommendation on PyTorch Lightning with fused C++/CUDA kernels.

Importing ``fairlit`` never builds anything; ``fairlit.ops`` loads the compiled library ``fairlit._C``
if it was installed, and otherwise falls back to the pure-PyTorch reference.
"""

__version__ = "0.1.0"
