"""Triton kernels of the SE op (forward.py, backward.py) and their dispatch (se_op.py).

``senet_kernels.backends`` imports this package (the kernels) on the first Triton call, not at
``import senet_kernels``. Triton itself may already be imported by then: torch._dynamo imports
it whenever it is installed.
"""
