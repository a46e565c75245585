"""``sciddpm plugins --check``: the kit over installed plugins; every fault a row, never a traceback."""

from __future__ import annotations

import json

from sciddpm.cli import main

HOOKS = """
from pydantic import BaseModel, ConfigDict
from sciddpm.hooks import Component, hookimpl

class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")

class Lax(BaseModel):
    factor: float = 2.0

@hookimpl
def sciddpm_components():
    return [
        Component("encoder", "lossy", "badplug_impl:Lossy", Strict),
        Component("encoder", "lax", "badplug_impl:Fine", Lax),
        Component("data", "unreachable", "badplug_impl:unreachable", Strict),
        Component("scheduler", "old", "badplug_impl:Fine", Strict, api_version=1),
        "not a record",
    ]
"""

IMPL = """
import torch
from sciddpm.components.encoders import Standardize


class Fine(Standardize):
    def __init__(self, config=None):
        super().__init__()


class Lossy(Fine):
    def decode(self, z):
        return super().decode(z.round())


def unreachable(config):
    raise OSError("cannot reach the lab share //nas/imaging")
"""


def _check(capsys, *args: str) -> tuple[int, str]:
    status = main(["plugins", "--check", *args])
    return status, capsys.readouterr().out


def test_each_fault_is_a_row_naming_the_plugin_and_the_check(make_dist, capsys):
    make_dist("badplug", {"bad": "badplug_hooks"}, {"badplug_hooks.py": HOOKS, "badplug_impl.py": IMPL})
    status, out = _check(capsys, "bad", "--json")
    assert status == 1
    rows = {(r["component"], r["check"]): r for r in json.loads(out)["outcomes"]}
    failed = {key for key, r in rows.items() if r["status"] == "fail"}
    assert failed == {
        ("bad (plugin)", "loads"),  # the malformed record and the old API version
        ("bad/lossy", "round_trip"),
        ("bad/lax", "config_rejects_unknown_keys"),
        ("bad/unreachable", "builds"),
    }, failed
    loads = [r["message"] for r in json.loads(out)["outcomes"] if r["check"] == "loads"]
    assert any("not a record" in m for m in loads)
    assert any("API 1" in m and "API 2" in m for m in loads)
    assert "OSError: cannot reach the lab share" in rows[("bad/unreachable", "builds")]["message"]
    assert rows[("bad/unreachable", "describe_is_json")]["status"] == "not run"
    assert rows[("bad/lax", "round_trip")]["status"] == "pass"


GOOD = """
from sciddpm.hooks import Component, hookimpl

@hookimpl
def sciddpm_components():
    return [Component("encoder", "fine", "badplug_impl:Fine", "sciddpm.components.encoders:IdentityConfig")]
"""


def test_table_of_a_good_plugin_and_an_unknown_plugin(make_dist, capsys):
    make_dist("goodplug", {"good": "goodplug_hooks"}, {"goodplug_hooks.py": GOOD, "badplug_impl.py": IMPL})
    status, out = _check(capsys, "good")
    assert status == 0
    assert out.splitlines()[0].split() == ["component", "check", "status", "message"]
    assert (
        "good/fine" in out and "round_trip" in out and "10 passed, 0 failed, 1 not run" in out
    )  # wrong_dims: it takes any
    assert main(["plugins", "--check", "nolab"]) == 1
    err = capsys.readouterr().err
    assert "no plugin 'nolab' is installed" in err and "Traceback" not in err
