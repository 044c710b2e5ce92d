"""Build the one C module (ndsharray._hot: the slot protocol's atomics); the rest of the
package metadata is in pyproject.toml."""

from setuptools import Extension, setup

setup(ext_modules=[Extension("ndsharray._hot", ["ndsharray/_hot.c"], extra_compile_args=["-O2", "-std=c11"])])
