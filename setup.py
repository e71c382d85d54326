"""Builds the CPU kernels in csrc/ into one extension, ``fastcsi._C``.

The extension is plain C++17 (std::thread, and OpenMP on Linux) behind pybind11 and numpy buffers: it does
not link against torch, so it builds in seconds and the package still imports (with a warning at use) when it is absent.
"""
import glob
import os
import sys

from pybind11.setup_helpers import Pybind11Extension, build_ext, has_flag
from setuptools import setup

sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
compile_args = ["-O3", "-std=c++17"]
link_args = []
if sys.platform.startswith("linux"):
    link_args += ["-pthread"]
if os.environ.get("FASTCSI_NATIVE_ARCH", "0") == "1":
    compile_args += ["-march=native"]

ext_modules = [
    Pybind11Extension(
        "fastcsi._C",
        sources,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
        cxx_std=17,
    )
]

class BuildExt(build_ext):
    """Adds OpenMP on Linux when the compiler takes it: the SiLU kernel then runs on the process's
    OpenMP pool (libgomp.so.1, the one torch loads); without it, that kernel runs single-threaded."""

    def build_extensions(self):
        if sys.platform.startswith("linux") and has_flag(self.compiler, "-fopenmp"):
            for ext in self.extensions:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
        super().build_extensions()


setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildExt})
