"""Option values checked with a suggestion: `--role admin` answers "did you mean 'model_admin'?" and lists
every valid value, where click's own error named the option and the bad value only."""
from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any

import click


def suggestion(value: str, valid: Sequence[str], what: str) -> str:
    """One line: what is wrong, the nearest valid value if there is one, and every valid value."""
    near = difflib.get_close_matches(value, valid, n=1, cutoff=0.5) or [
        name for name in valid if value and value in name][:1]
    hint = f"; did you mean {near[0]!r}?" if near else "."
    return f"{value!r} is not a {what}{hint} Valid: {', '.join(valid)}."


class SuggestingChoice(click.Choice):
    """click.Choice whose error suggests the nearest choice."""

    def __init__(self, choices: Sequence[str], what: str) -> None:
        super().__init__(choices)
        self.what = what

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value not in self.choices:
            self.fail(suggestion(value, [str(choice) for choice in self.choices], self.what), param, ctx)
        return super().convert(value, param, ctx)


def one_of(valid: Callable[[], Sequence[str]], what: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """An option callback checking a value against a list known only at run time (the rate-limit tiers
    come from the settings), with the same suggestion."""
    def check(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        names = list(valid())
        if value is not None and value not in names:
            raise click.BadParameter(suggestion(value, names, what))
        return value

    return check
