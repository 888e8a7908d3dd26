"""Build script. The package is pure Python today; the C++/CUDA extension senet_kernels._C
(csrc/) will be built from here with torch.utils.cpp_extension and ninja."""

from setuptools import setup

setup()
