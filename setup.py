"""Builds senet_kernels._C, the C++ (CPU) and CUDA kernels of the SE op, with ninja.

CppExtension when torch has no CUDA or no nvcc is found, CUDAExtension otherwise. Switches:

    SENET_KERNELS_NO_EXT=1     skip the extension (pure Python; Triton and reference backends)
    SENET_KERNELS_CPU_ONLY=1   build the CPU kernels only, even where CUDA is available
    SENET_KERNELS_CPU_ISA      "native" (default: AVX-512 or AVX2 when the build CPU has it),
                               "avx2" or "default"
    TORCH_CUDA_ARCH_LIST       GPU targets; defaults to "8.0;9.0" when no GPU is visible
    CUDA_HOME                  the CUDA toolkit; by default found from the real nvcc on PATH

Install with ``pip install --no-build-isolation -e .`` (the build imports the installed torch).
"""

import glob
import os
import re
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _flag(name):
    return os.environ.get(name, "0") not in ("", "0")


def _real_nvcc():
    """The nvcc binary itself: the `nvcc` first on PATH may be a wrapper script that execs it."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    nvcc = os.path.realpath(nvcc)
    with open(nvcc, "rb") as f:
        head = f.read(4096)
    if head.startswith(b"#!"):  # a script: take the first absolute path to a bin/nvcc it names
        for match in re.findall(rb"(/[^\s'\"]*/bin/nvcc)\b", head):
            if os.path.isfile(match.decode()):
                return os.path.realpath(match.decode())
    return nvcc


def _find_cuda_home():
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = _real_nvcc()
    return os.path.dirname(os.path.dirname(nvcc)) if nvcc else None


def _cpu_flags():
    """Vectorize the CPU kernels for the build machine's ISA (the extension is built where it
    runs): at::vec picks its AVX-512 / AVX2 implementation from CPU_CAPABILITY_AVX512 / _AVX2.
    SENET_KERNELS_CPU_ISA=avx2|default caps it (e.g. to build for older machines)."""
    # -fopenmp: at::parallel_for is inlined from ATen's headers and runs serially without it.
    # The C++ standard is torch's choice (C++20 from torch 2.13).
    # -Werror=switch: a switch over the activation / gate enums (se.h) that misses one fails
    # the build (they have no default case on purpose).
    flags = ["-O3", "-fopenmp", "-Wno-unknown-pragmas", "-Werror=switch"]
    try:
        with open("/proc/cpuinfo") as f:
            cpu = set(f.read().split())
    except OSError:
        cpu = set()
    cap = os.environ.get("SENET_KERNELS_CPU_ISA", "native")
    if cap == "native" and {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma"} <= cpu:
        flags += ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
                  "-DCPU_CAPABILITY_AVX512"]
    elif cap in ("native", "avx2") and {"avx2", "fma", "f16c"} <= cpu:
        flags += ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY_AVX2"]
    return flags


def _shared_libstdcxx():
    """The libstdc++ shared library this Python process (and so torch) runs with, as a
    linker input, or [] where there is none to find. Linking it by path keeps the C++
    runtime shared with torch even under a compiler wrapper whose library path offers only
    libstdc++.a: a static copy in the extension puts a second exception runtime in the
    process, and an exception thrown from the extension (a rejected argument) crashed it."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "libstdc++.so" in line}
    except OSError:
        return []
    return sorted(p for p in paths if os.path.isfile(p))[:1]


def extensions():
    if _flag("SENET_KERNELS_NO_EXT"):
        return [], {}
    import torch
    from torch.utils import cpp_extension

    sources = [os.path.relpath(p, ROOT) for p in
               sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cpp")) +
                      glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))]
    cuda_sources = [os.path.relpath(p, ROOT) for p in
                    sorted(glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu")))]
    cuda_home = _find_cuda_home()
    with_cuda = (torch.version.cuda is not None and cuda_home is not None and cuda_sources
                 and not _flag("SENET_KERNELS_CPU_ONLY"))
    cxx = _cpu_flags()
    if with_cuda:
        os.environ["CUDA_HOME"] = cuda_home
        cpp_extension.CUDA_HOME = cuda_home  # read at import of cpp_extension: set it here too
        if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
            os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
        ext = cpp_extension.CUDAExtension(
            "senet_kernels._C", sources + cuda_sources,
            extra_compile_args={"cxx": cxx + ["-DSENET_KERNELS_WITH_CUDA"],
                                "nvcc": ["-O3", "-DSENET_KERNELS_WITH_CUDA",
                                         "-Xcompiler=-Werror=switch"]},
            extra_link_args=["-fopenmp"] + _shared_libstdcxx())
    else:
        ext = cpp_extension.CppExtension("senet_kernels._C", sources,
                                         extra_compile_args={"cxx": cxx},
                                         extra_link_args=["-fopenmp"] + _shared_libstdcxx())
    print(f"senet_kernels: building {'CUDA + CPU' if with_cuda else 'CPU'} extension "
          f"(CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')})")
    # ninja builds in parallel; without it (a bare machine), setuptools compiles file by file.
    use_ninja = cpp_extension.is_ninja_available()
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=use_ninja)}


ext_modules, cmdclass = extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
