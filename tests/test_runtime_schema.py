"""runtime/schema.py: the one check of the JSON proxyembed reads back, and its one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import pytest

from proxyembed.runtime import BadInput, IntegrityError
from proxyembed.runtime.files import read_json_object
from proxyembed.runtime.schema import Field, describe, fits, validate

SCHEMA: dict[str, Any] = {
    "version": int,
    "space": Literal["cosine", "ip"],
    "inner": {"dim": Field(int, rule=lambda d: None if d > 0 else f"must be positive, got {d}")},
    "rows": Field(list, items={"file": str, "size": Field(float, required=False)}),
    "scores": Field(dict, required=False, items=float, hint="re-measure the scores"),
    "note": Field(str | None, required=False),
}
GOOD: dict[str, Any] = {"version": 1, "space": "ip", "inner": {"dim": 8}, "rows": [{"file": "a"}, {"file": "b", "size": 2}]}


def _error(data: Any, error: type[BadInput] = BadInput) -> BadInput:
    with pytest.raises(error) as err:
        validate(data, SCHEMA, where="f.json", error=error, hint="rebuild it")
    return err.value


def test_a_matching_object_passes_and_unknown_fields_are_allowed() -> None:
    validate({**GOOD, "scores": {"r@1": 0.5}, "note": None, "added_later": [1]}, SCHEMA, where="f.json")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({k: v for k, v in GOOD.items() if k != "version"}, "f.json: missing field 'version'"),
        ({**GOOD, "version": True}, 'f.json: "version": true is not an integer'),
        ({**GOOD, "version": 1.5}, 'f.json: "version": 1.5 is not an integer'),
        ({**GOOD, "space": "l2"}, 'f.json: "space": "l2" is not one of "cosine", "ip"'),
        ({**GOOD, "inner": {}}, "f.json: missing field 'inner.dim'"),
        ({**GOOD, "inner": [8]}, 'f.json: "inner": [8] is not an object'),
        ({**GOOD, "inner": {"dim": 0}}, "f.json: inner.dim must be positive, got 0"),
        ({**GOOD, "rows": [{"file": "a"}, {"file": 3}]}, 'f.json: "rows[1].file": 3 is not a string'),
        ({**GOOD, "rows": [{"file": "a", "size": "2"}]}, 'f.json: "rows[0].size": "2" is not a number'),
        ({**GOOD, "note": 5}, 'f.json: "note": 5 is not a string or null'),
        ([GOOD], f"f.json: {json.dumps([GOOD])[:59]}… is not an object"),
    ],
)
def test_each_fault_is_one_line_naming_the_file_and_the_field(data: Any, message: str) -> None:
    err = _error(data)
    assert err.message == message and err.hint == "rebuild it"


def test_a_field_hint_replaces_the_schema_hint_and_the_error_class_is_the_callers() -> None:
    err = _error({**GOOD, "scores": {"r@1": "high"}}, IntegrityError)
    assert isinstance(err, IntegrityError)
    assert err.message == 'f.json: "scores.r@1": "high" is not a number' and err.hint == "re-measure the scores"


def test_a_long_hostile_value_is_cut_and_stays_on_one_line() -> None:
    err = _error({**GOOD, "space": "x\n" * 500})
    assert "\n" not in err.message and len(err.message) < 120 and err.message.endswith("… is not one of \"cosine\", \"ip\"")


def test_types_follow_json_not_python() -> None:
    assert fits(3, float) and not fits(True, float) and not fits(True, int) and not fits(1, bool)
    assert fits(None, int | None) and fits("ip", Literal["cosine", "ip"]) and not fits(1, Literal[True])
    assert fits({"a": 1}, dict[str, Any]) and fits([1], (dict, list)) and not fits(None, (dict, list))
    assert describe(int | None) == "an integer or null" and describe((dict, None)) == "an object or null"


def test_sealed_file_fields_are_checked_with_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "info.json"
    path.write_text(json.dumps({"count": "12", "items": []}))
    with pytest.raises(IntegrityError) as err:
        read_json_object(path, missing="none", hint="h", broken_hint="rebuild", fields={"count": int, "items": list})
    assert err.value.message == f'{path}: "count": "12" is not an integer' and err.value.hint == "rebuild"
