"""The exception tree: every class drawn in the docstring with its status, and rebuilt from the body it answers with."""

import pytest

from forgeflow import errors


def _tree() -> list[type[errors.ForgeflowError]]:
    return [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.ForgeflowError)]


def test_every_class_is_drawn_with_its_status():
    for cls in _tree():
        line = next((ln for ln in errors.__doc__.splitlines() if f" {cls.__name__} " in ln), None)
        assert line, f"draw {cls.__name__} in the errors docstring"
        assert line.rstrip().endswith(f"({cls.status_code})"), line


@pytest.mark.parametrize("cls", [c for c in _tree() if c is not errors.ForgeflowError], ids=lambda c: c.__name__)
def test_an_error_body_comes_back_as_its_class(cls):
    sent = cls("what to do next", field="name")
    back = errors.from_dict(sent.status_code, sent.to_dict())
    assert type(back) is cls
    assert (back.message, back.field, back.status_code) == ("what to do next", "name", cls.status_code)


def test_an_unknown_name_keeps_the_status_it_came_with():
    back = errors.from_dict(502, {"error": "SomethingElse", "message": "bad gateway"})
    assert type(back) is errors.ForgeflowError and back.status_code == 502 and back.message == "bad gateway"
