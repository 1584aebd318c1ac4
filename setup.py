"""The one C extension: edge_proxy's simple-message recognizers (optional: without a compiler the pure-Python
reference in edge_proxy/http1/simple.py is used). Everything else about the package is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "edge_proxy.http1._simple", ["edge_proxy/http1/_simple.c"], optional=True,
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Werror=implicit-function-declaration"],
)])
