"""The code's shape: family logic lives in the backends, targets load no backend, data is validated."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import REPO, assert_one_line_error, run_cli


def test_no_family_or_kind_branches_outside_backends_and_the_target_loader():
    out = subprocess.run(
        ["git", "grep", "-nE", r"family ?==|kind\.name ?==", "--", "tvmsqz/"], cwd=REPO, capture_output=True, text=True
    )
    assert out.returncode in (0, 1), out.stderr
    offenders = [
        line for line in out.stdout.splitlines() if not line.startswith(("tvmsqz/backends/", "tvmsqz/targets.py:"))
    ]
    assert offenders == []
    # nor by sniffing a family's report keys (bench once spotted VTA by `simulated_cycles`)
    out = subprocess.run(
        ["git", "grep", "-n", "simulated_cycles", "--", "tvmsqz/"], cwd=REPO, capture_output=True, text=True
    )
    assert [line for line in out.stdout.splitlines() if not line.startswith(("tvmsqz/vta/", "tvmsqz/backends/"))] == []


def test_importing_targets_loads_no_backend_module():
    code = "import sys, tvmsqz.targets; print([m for m in sys.modules if m.startswith('tvmsqz.backends.')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "targets").glob("*.json")))
def test_every_shipped_target_file_validates_and_resolves(name):
    from tvmsqz.targets import get_target, load_target_file

    raw = load_target_file(REPO / "targets" / f"{name}.json")
    assert raw["name"] == name
    spec = get_target(name)
    assert spec.family == raw["family"]


@pytest.mark.parametrize(
    "content,field",
    [
        ({"name": "t", "family": "gpu"}, "family"),
        ({"name": "t", "family": "cpu"}, "tvm"),
        ({"name": "t", "family": "cpu", "tvm": {"kind": "llvm", "mattr": "+neon"}}, "tvm.mattr"),
        ({"name": "t", "family": "cpu", "tvm": {"kind": "llvm"}, "export": {"cc": 3}}, "export.cc"),
    ],
)
def test_malformed_target_file_names_the_field(tmp_path, content, field):
    path = tmp_path / "t.json"
    path.write_text(json.dumps(content))
    proc = run_cli("compile", "squeezenet1_1", "--target", str(path), "-o", str(tmp_path / "m.so"), check=False)
    assert_one_line_error(proc, str(path), f"'{field}'")
    assert proc.returncode == 2


def test_target_file_that_is_not_json_is_one_line(tmp_path):
    path = tmp_path / "t.json"
    path.write_text("{not json")
    proc = run_cli("targets", "--json", check=False)
    assert proc.returncode == 0  # shipped targets are unaffected by a stray file elsewhere
    proc = run_cli("run", "nothing.so", "--input", "x.npy", check=False)
    assert_one_line_error(proc, "nothing.so")
    proc = run_cli("compile", "squeezenet1_1", "--target", str(path), "-o", str(tmp_path / "m.so"), check=False)
    assert_one_line_error(proc, "not valid JSON")


def test_design_doc_target_example_validates():
    """docs/design.md shows a target file; the schema must accept it (it once showed one it refused)."""
    import re

    import jsonschema

    from tvmsqz.targets import SCHEMA

    text = (REPO / "docs" / "design.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, flags=re.S)
    assert blocks, "docs/design.md has no target example"
    for block in blocks:
        jsonschema.Draft202012Validator(SCHEMA).validate(json.loads(block))
