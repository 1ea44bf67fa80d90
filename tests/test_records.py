"""`providers.types.record`: the per-request records are frozen to the type checker and plain slots
dataclasses at run time (a frozen dataclass's `__init__` cost 4 % of a request's instructions).

What must hold: mypy refuses an assignment to any of their fields (the guarantee `frozen=True` gave, now
checked by `make lint` instead of at run time), and they still compare, hash and `replace` by their fields.
"""

from __future__ import annotations

import dataclasses
import itertools
import textwrap
from pathlib import Path

import pytest
from mypy import api as mypy_api

from gateway.billing import Bill
from gateway.limits import Effective
from gateway.store.base import Admission, AdmitResult, Settlement, WindowState
from providers.reasoning import Reasoning
from providers.types import ChatRequest, ChatResult, UpstreamRequest, Usage

ROOT = Path(__file__).resolve().parent.parent

# every class made with @record, one instance each (a new one belongs here too)
SAMPLES = {
    "gateway.billing.Bill": Bill(cost=1, balance=2, reserved=3, using_own_key=False, estimated=False),
    "gateway.limits.Effective": Effective(rpm=1, rpd=2, tpm=None),
    "gateway.store.base.Admission": Admission(key_id="k", model_id="m", generation_id="g", hold=1, hold_ttl_s=60),
    "gateway.store.base.WindowState": WindowState(limit=10, remaining=9, reset_s=1.5),
    "gateway.store.base.AdmitResult": AdmitResult(outcome="ok", balance=5),
    "gateway.store.base.Settlement": Settlement(charged=1, balance=2, already_settled=False),
    "providers.reasoning.Reasoning": Reasoning(on=True, effort="high"),
    "providers.types.ChatRequest": ChatRequest(body={"model": "m"}, stream=False),
    "providers.types.UpstreamRequest": UpstreamRequest(method="POST", url="http://u", headers={}, body=b"{}",
                                                       stream=False),
    "providers.types.ChatResult": ChatResult(body={"id": "x"}, usage=Usage(1, 2)),
}
HOLDING_A_DICT = {"providers.types.ChatRequest", "providers.types.UpstreamRequest", "providers.types.ChatResult"}


def test_every_record_class_in_the_code_is_sampled_here() -> None:
    """A class that gives up its run-time freezing must also be in the type checker's test below."""
    decorated = set()
    for package in ("gateway", "providers", "egress"):
        for path in (ROOT / package).rglob("*.py"):
            lines = path.read_text().splitlines()
            module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            for before, line in itertools.pairwise(lines):
                if before.strip() == "@record" and line.startswith("class "):
                    decorated.add(f"{module}.{line.split()[1].split('(')[0].rstrip(':')}")
    assert decorated == set(SAMPLES)


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_a_record_compares_hashes_and_replaces_by_its_fields(name: str) -> None:
    sample = SAMPLES[name]
    twin = dataclasses.replace(sample)
    assert twin == sample and twin is not sample
    if name not in HOLDING_A_DICT:  # unhashable, as they were when frozen
        assert hash(twin) == hash(sample)
    first = dataclasses.fields(sample)[0].name
    changed = dataclasses.replace(sample, **{first: _other(getattr(sample, first))})
    assert changed != sample
    assert not hasattr(sample, "__dict__")  # slots: no per-instance dict


def _other(value: object) -> object:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, dict):
        return {**value, "other": 1}
    raise AssertionError(f"no other value for {value!r}")


def test_the_type_checker_refuses_an_assignment_to_a_records_field(tmp_path: Path) -> None:
    lines = ["from __future__ import annotations", "import dataclasses", "from providers.types import record"]
    for i, (name, sample) in enumerate(sorted(SAMPLES.items())):
        module, cls = name.rsplit(".", 1)
        field = dataclasses.fields(sample)[0].name
        lines += [f"from {module} import {cls} as C{i}",
                  f"def set{i}(r: C{i}) -> None:",
                  f"    r.{field} = r.{field}"]
    lines += ["@record", "class Own:", "    a: int", "def own(r: Own) -> None:", "    r.a = 1"]
    snippet = tmp_path / "mutate.py"
    snippet.write_text("\n".join(lines) + "\n")
    out, err, status = mypy_api.run([str(snippet), "--cache-dir", str(tmp_path / "cache"), "--no-error-summary",
                                     "--config-file", str(ROOT / "pyproject.toml")])
    assert status == 1, textwrap.dedent(out + err)
    refused = [line for line in out.splitlines() if "is read-only" in line]
    assert len(refused) == len(SAMPLES) + 1, out  # each record's field, and a new class made with @record
    assert all("mutate.py" in line for line in out.splitlines()), out  # no other error anywhere

