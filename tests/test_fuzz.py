"""Property-based tests (hypothesis) of every parser a user or a hostile file reaches (issue 26).

Each parser is total: whatever bytes or JSON it is given, it returns a checked value or raises
one `TvmsqzError` (the bundle runner: one `Refusal`) whose message is one line; never another
exception, never a partial file. The parsers run in-process (fast: hundreds of examples each);
a bounded number of real CLI subprocesses then check the same classes end to end: exit 2, one
`error:` line, no traceback, nothing left behind, nothing replaced. docs/reliability.md lists
the cases.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, assert_one_line_error, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tvmsqz.errors import TvmsqzError

FAST = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
#: CLI subprocesses cost ~1 s each: a handful of examples per property.
CLI = settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))

#: Any JSON value, nested a little; integers far past every bound, booleans where numbers go.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)
hostile_ints = st.one_of(
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from([0, -1, 2**31, 2**63, 10**12, 36_000_000_000]),
    st.floats(allow_nan=True),
    st.text(max_size=5),
    st.none(),
)


def one_line(message: str) -> None:
    assert message and "\n" not in message.strip(), message


def files_in(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


# ------------------------------------------------------------------------------ artifact manifest

GOOD_MANIFEST = {
    "format": "tvmsqz-artifact/1",
    "model": "m",
    "target": {"family": "cpu", "name": "x86"},
    "input": {"name": "data", "shape": [1, 3, 224, 224], "dtype": "float32"},
    "artifact": {"file": "m.so", "bytes": 10, "sha256": "0" * 64},
    "files": [],
}
MANIFEST_PATHS = [
    ("input", "shape"),
    ("input", "shape", 0),
    ("input", "shape", 2),
    ("input", "dtype"),
    ("target", "family"),
    ("artifact", "bytes"),
    ("artifact", "sha256"),
    ("files",),
    ("input",),
    ("target",),
]


def _set(doc: dict, path: tuple, value) -> dict:
    doc = json.loads(json.dumps(doc))
    here = doc
    for key in path[:-1]:
        here = here[key]
    here[path[-1]] = value
    return doc


@FAST
@given(path=st.sampled_from(MANIFEST_PATHS), value=json_values | hostile_ints)
def test_manifest_check_is_total(path, value):
    from tvmsqz.manifest import check_manifest

    doc = _set(GOOD_MANIFEST, path, value)
    try:
        check_manifest(doc, Path("m.so.json"))
    except TvmsqzError as exc:
        one_line(str(exc))
        return
    # accepted: then every field a runner uses is in bounds
    shape = doc["input"]["shape"]
    assert len(shape) == 4 and all(type(d) is int and 1 <= d <= 4096 for d in shape)
    assert int(np.prod(shape, dtype=object)) <= 1 << 30
    assert all("/" not in f["file"] and f["file"] not in ("..", ".") for f in doc.get("files", []))


@FAST
@given(entry=json_values | st.fixed_dictionaries({"file": st.text(max_size=30), "bytes": hostile_ints}))
def test_manifest_files_entries_never_leave_the_folder(entry):
    from tvmsqz.manifest import check_manifest

    doc = _set(GOOD_MANIFEST, ("files",), [entry])
    try:
        check_manifest(doc, Path("m.so.json"))
    except TvmsqzError as exc:
        one_line(str(exc))
        return
    name = doc["files"][0]["file"]
    assert "/" not in name and "\\" not in name and name not in (".", "..")


@FAST
@given(raw=st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_manifest_reader_on_random_bytes(raw, tmp_path_factory):
    from tvmsqz.manifest import read_manifest

    folder = tmp_path_factory.mktemp("man")
    (folder / "m.so.json").write_bytes(raw)
    with pytest.raises(TvmsqzError) as info:
        read_manifest(folder / "m.so")
    one_line(str(info.value))


# ------------------------------------------------------------------------------ bundle.json

GOOD_BUNDLE = {
    "format": "tvmsqz-bundle/1",
    "target": "x86",
    "arch": "x86_64",
    "model": {"file": "model/m.so", "name": "m", "labels": "model/labels.txt"},
    "input": {"name": "data", "shape": [1, 3, 224, 224], "dtype": "float32"},
    "files": [{"file": "model/m.so", "bytes": 1, "sha256": "0" * 64}],
}
BUNDLE_PATHS = [
    ("input", "shape"),
    ("input", "shape", 1),
    ("input", "dtype"),
    ("files",),
    ("files", 0),
    ("files", 0, "bytes"),
    ("files", 0, "sha256"),
    ("files", 0, "file"),
    ("model",),
    ("model", "file"),
    ("runtime",),
]


@FAST
@given(path=st.sampled_from(BUNDLE_PATHS), value=json_values | hostile_ints)
def test_bundle_fields_check_is_total(path, value, tmp_path_factory):
    from tvmsqz.bundle import pyrunner

    root = tmp_path_factory.mktemp("bundle")
    doc = _set(GOOD_BUNDLE, path, value)
    try:
        pyrunner.check_bundle_fields(doc, str(root))
    except pyrunner.Refusal as exc:
        one_line(str(exc))
        return
    shape = doc["input"]["shape"]
    assert all(type(d) is int and 1 <= d <= 4096 for d in shape) and len(shape) == 4
    assert all(type(e["bytes"]) is int and e["bytes"] >= 0 for e in doc["files"])


@FAST
@given(raw=st.binary(max_size=300))
def test_python_runner_input_reader_on_random_bytes(raw, tmp_path_factory):
    from tvmsqz.bundle import pyrunner

    path = tmp_path_factory.mktemp("npy") / "x.npy"
    path.write_bytes(raw)
    with pytest.raises(pyrunner.Refusal) as info:
        pyrunner.load_input(str(path), {"shape": [1, 3, 8, 8], "dtype": "float32"})
    one_line(str(info.value))


@FAST
@given(
    shape=st.lists(st.integers(min_value=0, max_value=10**12), min_size=0, max_size=5),
    descr=st.sampled_from(["<f4", ">f4", "<f8", "|u1", "<f2", ">i8"]),
    fortran=st.booleans(),
)
def test_python_runner_refuses_any_header_but_the_models(shape, descr, fortran, tmp_path_factory):
    """A header declaring 1e12 elements, big-endian data, another dtype: refused from the header
    alone (the data is never allocated)."""
    from tvmsqz.bundle import pyrunner

    path = tmp_path_factory.mktemp("npy") / "x.npy"
    header = {"descr": descr, "fortran_order": fortran, "shape": tuple(shape)}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 64)
    want = {"shape": [1, 3, 8, 8], "dtype": "float32"}
    with pytest.raises(pyrunner.Refusal) as info:
        pyrunner.load_input(str(path), want)
    one_line(str(info.value))


# ------------------------------------------------------------------------------ prototxt

PROTO_WORDS = st.sampled_from(
    [
        "layer",
        "name",
        "type",
        "bottom",
        "top",
        "input",
        "input_dim",
        "convolution_param",
        "pooling_param",
        "kernel_size",
        "num_output",
        "stride",
        "pad",
        "pool",
        "global_pooling",
        '"Convolution"',
        '"Pooling"',
        '"ReLU"',
        '"Concat"',
        '"data"',
        '"conv1"',
        "MAX",
        "true",
        "{",
        "}",
        ":",
        "0",
        "1",
        "3",
        "227",
        "200000",
        "-1",
        "foo",
        "1.5",
        "#",
        "\n",
    ]
)


@FAST
@given(
    tokens=st.lists(PROTO_WORDS, max_size=80),
    depth=st.integers(min_value=0, max_value=6000),
)
def test_prototxt_parser_is_total(tokens, depth, tmp_path_factory):
    from tvmsqz.models.deep_compression import parse_prototxt

    path = tmp_path_factory.mktemp("proto") / "SqueezeNet_deploy.prototxt"
    text = 'input: "data"\ninput_dim: 1\ninput_dim: 3\ninput_dim: 227\ninput_dim: 227\n'
    text += "a { " * depth + " ".join(tokens) + " }" * depth
    path.write_text(text)
    try:
        net = parse_prototxt(path)
    except TvmsqzError as exc:
        one_line(str(exc))
        return
    for conv in net.convs:
        assert 1 <= conv.kernel <= 64 and 1 <= conv.out_channels and 1 <= conv.stride
    for layer in net.layers:
        assert len(layer.tops) == 1 and layer.bottoms


@FAST
@given(raw=st.binary(max_size=300))
def test_prototxt_parser_on_random_bytes(raw, tmp_path_factory):
    from tvmsqz.models.deep_compression import parse_prototxt

    path = tmp_path_factory.mktemp("proto") / "x.prototxt"
    path.write_bytes(raw)
    with pytest.raises(TvmsqzError) as info:
        parse_prototxt(path)
    one_line(str(info.value))


# ------------------------------------------------------------------------------ tuning databases


@FAST
@given(
    workloads=st.binary(max_size=200) | st.lists(json_values, max_size=3).map(lambda r: "\n".join(map(json.dumps, r))),
    records=st.binary(max_size=200) | st.lists(json_values, max_size=3).map(lambda r: "\n".join(map(json.dumps, r))),
)
def test_database_check_is_total(workloads, records, tmp_path_factory):
    from tvmsqz.database import RECORD_FILE, WORKLOAD_FILE, check_database, database_problem
    from tvmsqz.targets import get_target

    spec = get_target("x86-avx2")
    folder = tmp_path_factory.mktemp("db")
    for name, data in ((WORKLOAD_FILE, workloads), (RECORD_FILE, records)):
        (folder / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    try:
        check_database(folder, spec)
    except TvmsqzError as exc:
        one_line(str(exc))
        assert database_problem(folder, spec)  # the default-database chooser passes over it
    # whatever happened, nothing was written
    assert files_in(folder) == {WORKLOAD_FILE, RECORD_FILE}


# ------------------------------------------------------------------------------ target files

TARGET_PATHS = [
    ("tvm", "num-cores"),
    ("tvm", "host"),
    ("tvm", "kind"),
    ("tvm", "mattr"),
    ("family",),
    ("layout", "block"),
    ("layout", "classifier_pad"),
    ("schedules",),
    ("name",),
]


@FAST
@given(path=st.sampled_from(TARGET_PATHS), value=json_values | hostile_ints)
def test_target_file_loader_is_total(path, value, tmp_path_factory):
    from tvmsqz.targets import get_target

    base = json.loads((REPO / "targets" / "x86-avx2.json").read_text())
    base["name"] = "fuzz"
    doc = _set(base, path, value)
    target = tmp_path_factory.mktemp("t") / "t.json"
    target.write_text(json.dumps(doc))
    try:
        spec = get_target(str(target))
    except TvmsqzError as exc:
        one_line(str(exc))
        return
    cores = spec.tvm_config.get("num-cores")
    assert cores is None or (type(cores) is int and 1 <= cores <= 4096)


# ------------------------------------------------------------------------------ emulator state


@FAST
@given(state=json_values)
def test_emulator_state_reader_is_total(state, tmp_path_factory, monkeypatch):
    from tvmsqz.device import emulator

    folder = tmp_path_factory.mktemp("emu")
    (folder / "state.json").write_text(json.dumps(state))
    monkeypatch.setenv("TVMSQZ_EMU_STATE", str(folder))
    try:
        got = emulator._read_state()
    except TvmsqzError as exc:
        one_line(str(exc))
        return
    assert got is None or all(p["pgid"] >= 2 for p in [got["tracker"], *got["servers"]])


# ------------------------------------------------------------------------------ the error printer


@FAST
@given(message=st.text(max_size=3000))
def test_error_printer_prints_one_line_whatever_the_message(message):
    from tvmsqz.cli import MAX_ERROR_CHARS, one_line

    line = one_line(message)
    assert "\n" not in line and "\r" not in line and len(line) <= MAX_ERROR_CHARS


@FAST
@given(size=st.text(max_size=12))
def test_max_memory_parser_is_total(size):
    from tvmsqz.build import MAX_SIZE, parse_size

    try:
        value = parse_size(size)
    except TvmsqzError as exc:
        one_line(str(exc))
        return
    assert 1 <= value <= MAX_SIZE


@FAST
@given(batch=hostile_ints)
def test_api_batch_is_bounded(batch):
    from tvmsqz.api import load_model

    if type(batch) is int and 1 <= batch <= 4096:
        return  # a real load: other tests
    with pytest.raises(TvmsqzError) as info:
        load_model("squeezenet1_1", batch=batch)
    one_line(str(info.value))


# ------------------------------------------------------------------------------ the CLI, end to end


def _bad_size(text: str) -> bool:
    from tvmsqz.build import parse_size

    try:
        parse_size(text)
    except TvmsqzError:
        return True
    return False


@CLI
@given(
    case=st.one_of(
        st.tuples(
            st.just("--batch"),
            st.integers(min_value=-(10**25), max_value=10**25).filter(lambda v: not 1 <= v <= 4096).map(str),
        ),
        st.tuples(st.just("--max-memory"), st.text(min_size=1, max_size=8).filter(_bad_size)),
        st.tuples(st.just("--batch"), st.sampled_from(["1e3", "nan", "[red]x[/red]", "\n", ""])),
    )
)
def test_cli_numeric_arguments_are_one_line(case, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    flag, value = case
    proc = run_cli("compile", "squeezenet1_1", flag, value, "-o", str(folder / "o.so"), cwd=folder, check=False)
    assert proc.returncode == 2, proc.stderr
    assert_one_line_error(proc)
    assert files_in(folder) == set()


@CLI
@given(name=st.text(alphabet=string.ascii_letters + "[]/\n\\:*", min_size=1, max_size=20))
def test_cli_path_arguments_are_one_line(name, tmp_path_factory):
    """Missing or odd paths (markup brackets, newlines) as the model, the artifact and the target."""
    folder = tmp_path_factory.mktemp("cli")
    kept = folder / "keep.txt"
    kept.write_text("mine")
    for args in (
        ["run", name + ".so"],
        ["compile", name + ".onnx", "-o", str(folder / "o.so")],
        ["compile", "squeezenet1_1", "--target", name + ".json", "-o", str(folder / "o.so")],
    ):
        proc = run_cli(*args, cwd=folder, check=False, timeout=300)
        assert proc.returncode == 2, proc.stderr
        assert_one_line_error(proc)
    assert files_in(folder) == {"keep.txt"} and kept.read_text() == "mine"


@settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck))
@given(raw=st.binary(max_size=200).map(lambda b: b"\xff" + b))  # never valid UTF-8 JSON lines
def test_cli_database_of_random_bytes_is_one_line(raw, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    db = folder / "db"
    db.mkdir()
    (db / "database_workload.json").write_bytes(raw)
    (db / "database_tuning_record.json").write_bytes(raw)
    proc = run_cli(
        "compile",
        "squeezenet1_1",
        "--database",
        str(db),
        "-o",
        str(folder / "o.so"),
        cwd=folder,
        check=False,
        timeout=600,
    )
    assert_one_line_error(proc, "database")
    assert not (folder / "o.so").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["db"]
