"""The generic registry behind presets: registration, lookup, listing."""

from __future__ import annotations

import pytest

from tlkit import Registry


def test_register_get_and_names_with_a_pattern() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("beta")(2)
    reg.register("alpha")(1)
    reg.register("alpine")(3)
    assert reg.get("alpha") == 1 and "beta" in reg and len(reg) == 3
    assert reg.names() == ["alpha", "alpine", "beta"]
    assert reg.names("alp*") == ["alpha", "alpine"]


def test_duplicates_and_unknown_names_are_clear_errors() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("alpha")(1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("alpha")(2)
    assert reg.get("alpha") == 1
    with pytest.raises(KeyError, match="unknown widget 'alpah'; did you mean 'alpha'"):
        reg.get("alpah")
