"""Processing lives under ``uploader.processing``: one module per step behind the ``Step``
protocol, one table choosing the steps by detected type, and imports that go one way
(``workers`` uses ``uploader``; only the command line that starts a worker imports it)."""

from __future__ import annotations

import ast

from tests.support import REPO
from uploader.processing.steps import catalogue, pipeline_for
from uploader.processing.steps.base import Step
from uploader.settings import Settings


def _imports_workers(path: str) -> list[int]:
    tree = ast.parse((REPO / path).read_text(), path)
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "workers" for a in node.names):
            lines.append(node.lineno)
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "workers":
            lines.append(node.lineno)
    return lines


def test_nothing_under_uploader_imports_workers_but_the_command_line() -> None:
    found = {
        str(path.relative_to(REPO)): lines
        for path in sorted((REPO / "uploader").rglob("*.py"))
        if (lines := _imports_workers(str(path.relative_to(REPO))))
    }
    assert set(found) <= {"uploader/cli.py"}, found


def test_each_step_is_a_module_of_its_own_behind_the_step_protocol() -> None:
    steps = catalogue(Settings())
    modules = [type(step).__module__ for step in steps]
    assert len(set(modules)) == len(modules), modules
    assert all(module.startswith("uploader.processing.steps.") for module in modules)
    for step in steps:
        assert isinstance(step.name, str)
        assert isinstance(step.records, tuple)
        assert isinstance(step.announces, tuple)
        assert callable(step.run)
        _: Step = step  # the protocol, checked by the type checker too


def test_the_steps_are_chosen_by_detected_type_from_one_table() -> None:
    steps = catalogue(Settings())
    scanning = catalogue(Settings(clamav_url="tcp://127.0.0.1:3310"))

    def names(detected: str | None) -> list[str]:
        return [step.name for step in pipeline_for(steps, detected)]

    assert names("image/jpeg") == ["sniff", "sha256", "variants"]
    assert names("image/png") == ["sniff", "sha256", "variants"]
    assert names("application/pdf") == ["sniff", "sha256", "pdf"]
    assert names("text/plain") == ["sniff", "sha256"]
    assert names(None) == ["sniff", "sha256"]  # before sniffing: the steps for every file
    # Scanning, when configured, applies to every file, before any step that decodes.
    assert [step.name for step in pipeline_for(scanning, "image/png")] == [
        "sniff",
        "sha256",
        "scan",
        "variants",
    ]
    assert [step.name for step in pipeline_for(scanning, "text/plain")] == ["sniff", "sha256", "scan"]
