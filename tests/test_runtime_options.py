"""The one KEY=VALUE parser: comma items and repeats, conversions, allowed keys, and one-line errors naming the option."""

from __future__ import annotations

import math

import pytest

from proxyembed.runtime.errors import BadInput
from proxyembed.runtime.options import json_or_text, parse_key_values


def test_items_split_on_commas_and_repeat_with_the_later_winning() -> None:
    parsed = parse_key_values(["a=1, b = 2.5", "", "a=-3,c=inf"], "--x", example="a=1")
    assert parsed == {"a": -3.0, "b": 2.5, "c": math.inf}


def test_whole_values_through_json_or_as_text() -> None:
    parsed = parse_key_values(["alpha=32", "milestones=[1,2]", "name=proxy anchor", "on=true"], "--loss-param", example="alpha=32",
                              convert=json_or_text, commas=False)
    assert parsed == {"alpha": 32, "milestones": [1, 2], "name": "proxy anchor", "on": True}


@pytest.mark.parametrize(
    ("values", "keys", "message"),
    [
        (["a"], None, "--x 'a' is not KEY=VALUE"),
        (["=1"], None, "--x '=1' is not KEY=VALUE"),
        (["a=lots"], None, "--x 'a=lots' is not KEY=VALUE: cannot read 'lots'"),
        (["a=nan"], None, "--x 'a=nan' is not KEY=VALUE: cannot read 'nan'"),
        (["b=1"], ("a",), "--x 'b=1': unknown key 'b'"),
    ],
)
def test_mistakes_are_one_line_naming_the_option(values: list[str], keys: tuple[str, ...] | None, message: str) -> None:
    with pytest.raises(BadInput) as info:
        parse_key_values(values, "--x", example="a=1", keys=keys)
    assert info.value.message == message and "e.g. --x a=1" in (info.value.hint or "")
