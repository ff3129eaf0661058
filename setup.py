"""The optional C extension ``graphviz_autograd.record._reduce`` (one-pass tensor statistics).

Everything else is declared in pyproject.toml. Without a C compiler the build
skips the extension and ``graphviz_autograd.record.stats`` uses NumPy instead
(a recorded run's metadata says which: ``"stats": "native"`` or ``"numpy"``).
"""
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    def build_extensions(self):
        if self.compiler.compiler_type == "unix":        # gcc or clang
            for ext in self.extensions:
                ext.extra_compile_args += ["-O3", "-fopenmp-simd"]
        super().build_extensions()


setup(
    ext_modules=[Extension("graphviz_autograd.record._reduce", ["graphviz_autograd/record/_reduce.c"],
                           optional=True)],
    cmdclass={"build_ext": BuildExt},
)
