"""Build the one C module (ndsharray._hot: the slot protocol's atomics); the rest of the
package metadata is in pyproject.toml."""

from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class BuildExt(build_ext):
    """Say what is missing when the C module cannot be compiled."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:
            raise SystemExit(
                f"ndsharray: could not compile its C module ndsharray/_hot.c ({exc}).\n"
                "It needs a C compiler and the Python headers: on Debian/Ubuntu "
                "'apt install build-essential python3-dev', on Fedora 'dnf install gcc python3-devel'."
            ) from exc


def extensions() -> list[Any]:
    import numpy  # a build requirement (pyproject.toml): _hot builds its views with numpy's C API

    return [Extension("ndsharray._hot", ["ndsharray/_hot.c"], include_dirs=[numpy.get_include()],
                      extra_compile_args=["-O2", "-std=c11"]),
            Extension("ndsharray._waitv", ["ndsharray/_waitv.c"], extra_compile_args=["-O2", "-std=c11"])]


setup(ext_modules=extensions(), cmdclass={"build_ext": BuildExt})
