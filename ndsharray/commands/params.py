"""Argument checks the subcommands share: a TAG in the user's terms, and numbers that are
not NaN."""

from __future__ import annotations

import math
from typing import Any

import click

from ..protocol import check_tag


def tag_arg(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Check a TAG argument here, in the user's terms (not the protocol's)."""
    try:
        return check_tag(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class Number(click.FloatRange):
    """A ``FloatRange`` that refuses NaN (which passes every range check: no comparison with
    it is true)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        out = super().convert(value, param, ctx)
        if out is not None and math.isnan(out):
            self.fail(f"{value!r} is NaN; give a number", param, ctx)
        return out
