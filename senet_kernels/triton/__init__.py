"""Triton kernels of the SE op (forward.py, backward.py) and their dispatch (se_op.py).

Importing this package imports triton; ``senet_kernels.backends`` does so only on demand.
"""
