"""What a user of promote, fetch and registry sees, on both backends (local directory, fake GCS)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from modelgate.cli import fetch, human_bytes, promote
from modelgate.cli import registry as registry_cli
from modelgate.registry.registry import Registry
from modelgate.formats import canonical_json

from modelgate.testing.cli import one_line_error, overwrite, promote_ok, run
from modelgate.testing.releases import build_hash, file_digests, make_bundle, receipt_size


def registry_keys(registry: Registry) -> list[str]:
    return registry.storage.list("")


def test_promote_then_fetch_gives_the_exact_files(capsys, registry_uri, tmp_path):
    bundle = make_bundle(tmp_path / "bundles")
    rc, out, err = run(capsys, promote.main, "--tag=stable", f"--release={bundle}", f"--registry={registry_uri}")
    assert rc == 0, err
    assert out.count("\n") == 1
    assert "promoted tiny_transformer" in out and "no baseline" in out

    out_dir = tmp_path / "deploy" / "stable"
    rc, out, err = run(capsys, fetch.main, "--model=tiny_transformer", "--tag=stable", f"--out={out_dir}", f"--registry={registry_uri}")
    assert rc == 0, err
    assert "signature and digests verified" in out
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "manifest.json", "manifest.sig", "model.onnx", "receipt.model_test_cpu.json", "weights.safetensors"
    ]  # fmt: skip
    for name in ("model.onnx", "weights.safetensors"):
        assert (out_dir / name).read_bytes() == (bundle / name).read_bytes()
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["build_hash"] == build_hash(bundle)
    assert manifest["registry"]["created_at"]
    # Fetch by build hash (and by a unique prefix) gives the same build.
    rc, _, err = run(capsys, fetch.main, "--model=tiny_transformer", f"--build={build_hash(bundle)[:10]}",
                     f"--out={tmp_path / 'by-hash'}", f"--registry={registry_uri}")  # fmt: skip
    assert rc == 0, err
    assert (tmp_path / "by-hash" / "weights.safetensors").read_bytes() == (bundle / "weights.safetensors").read_bytes()


def test_the_fetched_directory_verifies_with_the_upstream_model_signing_tool(capsys, registry_uri, tmp_path, keys):
    from model_signing import verifying

    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b"))
    out_dir = tmp_path / "out"
    assert run(capsys, fetch.main, "--model=tiny_transformer", "--tag=stable", f"--out={out_dir}", f"--registry={registry_uri}")[0] == 0
    config = verifying.Config().use_elliptic_key_verifier(public_key=keys["signer_public"]).set_ignore_unsigned_files(True)
    config.verify(out_dir, out_dir / "manifest.sig")


def test_layout_blobs_then_manifest_then_tag(capsys, registry_uri, registry, tmp_path):
    bundle = make_bundle(tmp_path / "b")
    promote_ok(capsys, registry_uri, bundle)
    h = build_hash(bundle)
    expected = {f"blobs/sha256/{d}" for d in file_digests(bundle).values()} | {
        f"models/tiny_transformer/builds/{h}.json",
        "models/tiny_transformer/history/0000000001.json",
        "models/tiny_transformer/head.json",
        "models/tiny_transformer/tags/stable.json",
    }
    assert set(registry_keys(registry)) == expected
    pointer = json.loads(registry.storage.read("models/tiny_transformer/tags/stable.json"))
    assert pointer["build_hash"] == h and pointer["seq"] == 1


def test_promoting_an_unchanged_build_again_uploads_nothing(capsys, registry_uri, registry, tmp_path):
    bundle = make_bundle(tmp_path / "b")
    first = promote_ok(capsys, registry_uri, bundle)[0]
    assert first["bytes_uploaded"] == 4096 + 2048 + receipt_size(bundle) and first["status"] == "promoted" and first["first"]
    again = promote_ok(capsys, registry_uri, bundle)[0]
    assert again["bytes_uploaded"] == 0 and again["status"] == "unchanged"
    # The same build to another tag: still nothing uploaded, one more history event.
    canary = promote_ok(capsys, registry_uri, bundle, tag="canary")[0]
    assert canary["bytes_uploaded"] == 0 and canary["status"] == "promoted"
    assert registry.history_seqs("tiny_transformer") == [1, 2]


def test_a_blob_already_present_is_not_uploaded_again(capsys, registry_uri, tmp_path):
    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b", seed=1, shared_onnx=True))
    bundle = make_bundle(tmp_path / "b", seed=2, shared_onnx=True, accuracy=0.96)
    second = promote_ok(capsys, registry_uri, bundle)[0]
    # The weights, and the test receipt (bound to the new build hash); not model.onnx.
    assert second["bytes_uploaded"] == 4096 + receipt_size(bundle) and second["files_uploaded"] == 2


def test_channel_promotion_refuses_a_regression_unless_forced_with_a_reason(capsys, registry_uri, registry, tmp_path):
    good = make_bundle(tmp_path / "b", seed=1, accuracy=0.95)
    worse = make_bundle(tmp_path / "b", seed=2, accuracy=0.90)
    promote_ok(capsys, registry_uri, good)
    before = registry_keys(registry)

    rc, out, err = run(capsys, promote.main, "--tag=stable", f"--release={worse}", f"--registry={registry_uri}")
    line = one_line_error(err)
    assert rc == 1 and out == ""
    assert "refusing to promote" in line and "accuracy" in line and "--force" in line
    assert registry_keys(registry) == before  # nothing written

    rc, _, err = run(capsys, promote.main, "--tag=stable", f"--release={worse}", f"--registry={registry_uri}", "--force")
    assert rc == 2 and "--reason" in one_line_error(err)

    result = promote_ok(capsys, registry_uri, worse, extra=["--force", "--reason=hotfix for tokenizer bug"])[0]
    assert result["forced"] and result["previous"] == build_hash(good)
    event = registry.read_event("tiny_transformer", 2)
    assert event["forced"] is True and event["reason"] == "hotfix for tokenizer bug"
    assert event["previous"] == build_hash(good) and event["build_hash"] == build_hash(worse)
    assert [c["metric"] for c in event["checks"] if not c["passed"]] == ["accuracy"]


def test_a_small_regression_within_budget_and_lower_is_better_metrics(capsys, registry_uri, tmp_path):
    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b", seed=1, accuracy=0.95, loss=0.10))
    # accuracy -0.01 (budget 0.02), loss +0.04 (budget 0.05): allowed.
    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b", seed=2, accuracy=0.94, loss=0.14))
    # loss +0.06 against 0.14 would be fine for accuracy but breaks loss's budget.
    worse_loss = make_bundle(tmp_path / "b", seed=3, accuracy=0.99, loss=0.21)
    rc, _, err = run(capsys, promote.main, "--tag=stable", f"--release={worse_loss}", f"--registry={registry_uri}")
    assert rc == 1 and "loss" in one_line_error(err) and "accuracy" not in err


def test_version_tags_are_immutable(capsys, registry_uri, registry, tmp_path):
    a = make_bundle(tmp_path / "b", seed=1)
    b = make_bundle(tmp_path / "b", seed=2, accuracy=0.99)
    assert promote_ok(capsys, registry_uri, a, tag="v1.0.0-rc.1")[0]["status"] == "promoted"
    rc, _, err = run(capsys, promote.main, "--tag=v1.0.0-rc.1", f"--release={b}", f"--registry={registry_uri}", "--force", "--reason=x")
    assert rc == 1 and "never move" in one_line_error(err)
    assert promote_ok(capsys, registry_uri, a, tag="v1.0.0-rc.1")[0]["status"] == "unchanged"
    assert registry.read_pointer("tiny_transformer", "v1.0.0-rc.1").build_hash == build_hash(a)
    rc, _, err = run(capsys, registry_cli.main, "rollback", "tiny_transformer", "--tag=v1.0.0-rc.1", f"--registry={registry_uri}")
    assert rc == 1 and "version tag" in one_line_error(err)


@pytest.mark.parametrize("tag", ["Stable", "v1.0", "v1.0.0-rc1", "v1", "1.0.0", "-canary", "stable/x", "v01.0.0"])
def test_invalid_tags_are_refused_and_nothing_is_written(capsys, registry_uri, registry, tmp_path, tag):
    rc, out, err = run(capsys, promote.main, f"--tag={tag}", f"--release={make_bundle(tmp_path / 'b')}", f"--registry={registry_uri}")
    assert rc == 2 and out == ""
    assert "invalid tag" in one_line_error(err)
    assert registry_keys(registry) == []


def _edit_manifest(bundle: Path, change) -> None:
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda b: _edit_manifest(b, lambda m: m["gate"].update(passed=False)), "release gate did not pass"),
        (lambda b: _edit_manifest(b, lambda m: m.update(schema="modelgate/release@9")), "unknown schema"),
        (lambda b: (b / "weights.safetensors").write_bytes(b"\0" * 4096), "does not match its manifest"),
        (lambda b: (b / "model.onnx").unlink(), "listed but missing"),
        (lambda b: _edit_manifest(b, lambda m: m["files"].update({"../escape": m["files"]["model.onnx"]})), "invalid release file name"),
    ],
    ids=["gate-failed", "unknown-schema", "digest-mismatch", "missing-file", "path-escape"],
)
def test_unpromotable_bundles_are_refused(capsys, registry_uri, registry, tmp_path, spoil, message):
    bundle = make_bundle(tmp_path / "b")
    spoil(bundle)
    rc, out, err = run(capsys, promote.main, "--tag=stable", f"--release={bundle}", f"--registry={registry_uri}")
    assert rc == 1 and out == ""
    assert message in one_line_error(err)
    assert registry_keys(registry) == []


def test_model_filter_and_unknown_model(capsys, registry_uri, registry, tmp_path):
    a = make_bundle(tmp_path / "b", model="alpha")
    b = make_bundle(tmp_path / "b", model="beta")
    rc, _, err = run(capsys, promote.main, "--tag=stable", f"--release={a}", f"--release={b}", "--model=gamma", f"--registry={registry_uri}")
    assert rc == 2 and "unknown model 'gamma'" in one_line_error(err) and "alpha, beta" in err
    assert registry_keys(registry) == []
    results = promote_ok(capsys, registry_uri, a, b, extra=["--model=beta"])
    assert [r["model"] for r in results] == ["beta"]
    results = promote_ok(capsys, registry_uri, a, b)
    assert [(r["model"], r["status"]) for r in results] == [("alpha", "promoted"), ("beta", "unchanged")]


def test_dry_run_writes_nothing(capsys, registry_uri, registry, tmp_path):
    bundle = make_bundle(tmp_path / "b")
    rc, out, err = run(capsys, promote.main, "--tag=stable", f"--release={bundle}", f"--registry={registry_uri}", "--dry-run")
    assert rc == 0 and out.startswith("would promote tiny_transformer") and f"would upload {human_bytes(4096 + 2048 + receipt_size(bundle))}" in out
    assert registry_keys(registry) == []


def _spoil_blob(registry: Registry, digest: str, data_fn) -> None:
    key = registry.blob_key(digest)
    data = registry.storage.read(key)
    overwrite(registry, key, data_fn(data))


def _flip_byte(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1 :]


def _edit_build(registry: Registry, h: str, change) -> None:
    key = registry.build_key("tiny_transformer", h)
    doc = json.loads(registry.storage.read(key))
    change(doc)
    overwrite(registry, key, canonical_json(doc))


@pytest.mark.parametrize(
    "tamper, message",
    [
        ("flip-byte", "does not match the signed manifest"),
        ("truncate", "does not match the signed manifest"),
        ("extend", "larger than its manifest says"),
        ("delete-blob", "missing from"),
        ("edit-metrics", "changed after it was signed"),
        ("edit-digest", "changed after it was signed"),
        ("edit-blake3", "changed after it was signed"),
        ("drop-blake3", "changed after it was signed"),  # no falling back to sha256 by removing it
        ("unsigned", "not signed"),
        ("not-json", "not valid JSON"),
    ],
)
def test_fetch_refuses_tampering_and_leaves_nothing_behind(capsys, registry_uri, registry, tmp_path, tamper, message):
    bundle = make_bundle(tmp_path / "b")
    promote_ok(capsys, registry_uri, bundle)
    h = build_hash(bundle)
    weights = file_digests(bundle)["weights.safetensors"]
    if tamper == "flip-byte":
        _spoil_blob(registry, weights, _flip_byte)
    elif tamper == "truncate":
        _spoil_blob(registry, weights, lambda d: d[: len(d) // 2])
    elif tamper == "extend":
        _spoil_blob(registry, weights, lambda d: d + b"\0")
    elif tamper == "delete-blob":
        registry.storage.delete(registry.blob_key(weights))
    elif tamper == "edit-metrics":
        _edit_build(registry, h, lambda d: d["metrics"].update(accuracy=0.999))
    elif tamper == "edit-digest":
        fake = "0" * 64
        _edit_build(registry, h, lambda d: d["files"]["weights.safetensors"].update(sha256=fake))
    elif tamper == "edit-blake3":
        fake = "0" * 64
        _edit_build(registry, h, lambda d: d["files"]["weights.safetensors"].update(blake3=fake))
    elif tamper == "drop-blake3":
        _edit_build(registry, h, lambda d: d["files"]["weights.safetensors"].pop("blake3"))
    elif tamper == "unsigned":
        _edit_build(registry, h, lambda d: d.pop("signature"))
    elif tamper == "not-json":
        overwrite(registry, registry.build_key("tiny_transformer", h), b"{not json")

    parent = tmp_path / "deploy"
    parent.mkdir()
    rc, out, err = run(capsys, fetch.main, "--model=tiny_transformer", "--tag=stable", f"--out={parent / 'new'}", f"--registry={registry_uri}")
    assert rc == 1 and out == ""
    assert message in one_line_error(err)
    assert list(parent.iterdir()) == []
    # Into a directory whose parents do not exist yet: those are removed again too.
    rc, _, _ = run(capsys, fetch.main, "--model=tiny_transformer", "--tag=stable", f"--out={parent / 'a' / 'b'}", f"--registry={registry_uri}")
    assert rc == 1 and list(parent.iterdir()) == []


def test_fetch_refuses_a_signature_from_another_key(capsys, registry_uri, tmp_path, keys):
    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b"))
    rc, _, err = run(capsys, fetch.main, "--model=tiny_transformer", "--tag=stable", f"--out={tmp_path / 'out'}",
                     f"--registry={registry_uri}", f"--public-key={keys['stranger_public']}")  # fmt: skip
    assert rc == 1 and "signature does not verify" in one_line_error(err)
    assert not (tmp_path / "out").exists()


def test_fetch_unknown_model_tag_or_build(capsys, registry_uri, tmp_path):
    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b"))
    base = [f"--out={tmp_path / 'out'}", f"--registry={registry_uri}"]
    rc, _, err = run(capsys, fetch.main, "--model=nope", "--tag=stable", *base)
    assert rc == 2 and "model 'nope' is not in registry" in one_line_error(err) and "tiny_transformer" in err
    rc, _, err = run(capsys, fetch.main, "--model=tiny_transformer", "--tag=canary", *base)
    assert rc == 2 and "no tag 'canary'" in one_line_error(err) and "stable" in err
    rc, _, err = run(capsys, fetch.main, "--model=tiny_transformer", f"--build={'ab' * 32}", *base)
    assert rc == 2 and "has no build" in one_line_error(err)
    rc, _, err = run(capsys, fetch.main, "--model=tiny_transformer", *base)
    assert rc == 2 and "--tag" in one_line_error(err)
    assert not (tmp_path / "out").exists()


def test_fetch_into_a_non_empty_directory_is_refused(capsys, registry_uri, tmp_path):
    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b"))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    rc, _, err = run(capsys, fetch.main, "--model=tiny_transformer", "--tag=stable", f"--out={out}", f"--registry={registry_uri}")
    assert rc == 2 and "not empty" in one_line_error(err)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_rollback_walks_back_one_promotion_at_a_time(capsys, registry_uri, registry, tmp_path):
    a, b, c = (make_bundle(tmp_path / "b", seed=s, accuracy=0.9 + s / 100) for s in (1, 2, 3))
    for bundle in (a, b, c):
        promote_ok(capsys, registry_uri, bundle)
    uri = f"--registry={registry_uri}"
    rc, out, err = run(capsys, registry_cli.main, "rollback", "tiny_transformer", "--tag=stable", uri, "--reason=bad canary")
    assert rc == 0, err
    assert out.strip() == f"rolled tiny_transformer stable back to {build_hash(b)[:12]} (was {build_hash(c)[:12]})"
    assert run(capsys, registry_cli.main, "rollback", "tiny_transformer", "--tag=stable", uri)[0] == 0
    assert registry.read_pointer("tiny_transformer", "stable").build_hash == build_hash(a)
    rc, _, err = run(capsys, registry_cli.main, "rollback", "tiny_transformer", "--tag=stable", uri)
    assert rc == 1 and "nothing to roll stable back to" in one_line_error(err)
    events = registry.events("tiny_transformer")
    assert [(e["action"], e["build_hash"], e["previous"]) for e in events[3:]] == [
        ("rollback", build_hash(b), build_hash(c)),
        ("rollback", build_hash(a), build_hash(b)),
    ]
    assert events[3]["reason"] == "bad canary"


def test_ls_show_history(capsys, registry_uri, tmp_path):
    uri = f"--registry={registry_uri}"
    rc, out, _ = run(capsys, registry_cli.main, "ls", uri)
    assert rc == 0 and out.strip() == f"no models in {registry_uri}"
    a = make_bundle(tmp_path / "b", seed=1)
    b = make_bundle(tmp_path / "b", seed=2, accuracy=0.96)
    promote_ok(capsys, registry_uri, a, tag="v1.0.0")
    promote_ok(capsys, registry_uri, a)
    promote_ok(capsys, registry_uri, b)
    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b", model="other"))

    rc, out, _ = run(capsys, registry_cli.main, "ls", uri)
    assert out.splitlines() == [
        f"other  stable={build_hash(make_bundle(tmp_path / 'b', model='other'))[:12]}",
        f"tiny_transformer  stable={build_hash(b)[:12]} v1.0.0={build_hash(a)[:12]}",
    ]
    rc, out, _ = run(capsys, registry_cli.main, "ls", uri, "--json")
    models = json.loads(out)["models"]
    assert models[1]["tags"]["stable"]["build_hash"] == build_hash(b)

    rc, out, _ = run(capsys, registry_cli.main, "show", "tiny_transformer", uri)
    assert rc == 0 and "2 tag(s), 2 tagged build(s)" in out and "accuracy=0.96" in out
    info = json.loads(run(capsys, registry_cli.main, "show", "tiny_transformer", uri, "--json")[1])
    assert info["tags"]["stable"]["build_hash"] == build_hash(b) and not info["tags"]["stable"]["pending"]
    assert info["tagged_builds"][build_hash(a)]["metrics"]["accuracy"] == 0.95

    rc, out, _ = run(capsys, registry_cli.main, "history", "tiny_transformer", uri)
    assert len(out.splitlines()) == 3
    events = json.loads(run(capsys, registry_cli.main, "history", "tiny_transformer", uri, "--json", "--oldest-first")[1])["events"]
    assert [(e["seq"], e["tag"], e["build_hash"], e["previous"]) for e in events] == [
        (1, "v1.0.0", build_hash(a), None),
        (2, "stable", build_hash(a), None),
        (3, "stable", build_hash(b), build_hash(a)),
    ]
    rc, _, err = run(capsys, registry_cli.main, "show", "missing", uri)
    assert rc == 2 and "not in registry" in one_line_error(err)


def _promote_without_moving_the_pointer(capsys, registry_uri, bundle, tag="stable"):
    """A promote killed between committing its history event and moving the tag pointer."""
    from modelgate.registry.registry import Registry as RegistryClass

    original = RegistryClass.materialize
    RegistryClass.materialize = lambda self, *args, **kwargs: None
    try:
        promote_ok(capsys, registry_uri, bundle, tag=tag)
    finally:
        RegistryClass.materialize = original


def test_a_committed_event_whose_pointer_was_not_moved_is_completed_by_the_next_promote(capsys, registry_uri, registry, tmp_path):
    a = make_bundle(tmp_path / "b", seed=1)
    b = make_bundle(tmp_path / "b", seed=2, accuracy=0.96)
    c = make_bundle(tmp_path / "b", seed=3, accuracy=0.97)
    promote_ok(capsys, registry_uri, a)
    _promote_without_moving_the_pointer(capsys, registry_uri, b)
    assert registry.read_pointer("tiny_transformer", "stable").build_hash == build_hash(a)  # readers: the old build
    info = json.loads(run(capsys, registry_cli.main, "show", "tiny_transformer", f"--registry={registry_uri}", "--json")[1])
    assert info["tags"]["stable"]["pending"] and info["tags"]["stable"]["build_hash"] == build_hash(b)
    result = promote_ok(capsys, registry_uri, c)[0]
    assert result["previous"] == build_hash(b)  # decided against the committed event, not the stale pointer
    assert registry.read_pointer("tiny_transformer", "stable").build_hash == build_hash(c)


def test_a_promote_to_another_tag_also_completes_a_pending_pointer(capsys, registry_uri, registry, tmp_path):
    a = make_bundle(tmp_path / "b", seed=1)
    b = make_bundle(tmp_path / "b", seed=2, accuracy=0.96)
    promote_ok(capsys, registry_uri, a)
    _promote_without_moving_the_pointer(capsys, registry_uri, b)
    promote_ok(capsys, registry_uri, a, tag="canary")
    pointer = registry.read_pointer("tiny_transformer", "stable")
    assert (pointer.build_hash, pointer.seq) == (build_hash(b), 2)
    assert registry.read_pointer("tiny_transformer", "canary").seq == 3


def test_embedded_default_registry_generates_a_dev_key_once(capsys, monkeypatch, clean_env, tmp_path):
    monkeypatch.delenv("MODELGATE_SIGNING_KEY")
    monkeypatch.delenv("MODELGATE_PUBLIC_KEY")
    rc, _, err = run(capsys, fetch.main, "--model=tiny_transformer", "--tag=stable", f"--out={tmp_path / 'o'}")
    assert rc == 2 and "no public key" in one_line_error(err)
    rc, out, err = run(capsys, promote.main, "--tag=stable", f"--release={make_bundle(tmp_path / 'b', seed=1)}")
    assert rc == 0 and "generated a development signing key" in err
    assert (clean_env / ".modelgate" / "registry" / "blobs").is_dir()
    assert oct((clean_env / ".modelgate" / "keys" / "dev-signing-key.pem").stat().st_mode & 0o777) == "0o600"
    rc, out, err = run(capsys, promote.main, "--tag=stable", f"--release={make_bundle(tmp_path / 'b', seed=2)}")
    assert rc == 0 and err == ""
    rc, out, err = run(capsys, fetch.main, "--model=tiny_transformer", "--tag=stable", f"--out={tmp_path / 'o'}")
    assert rc == 0, err
    # An explicitly named registry never gets a dev key: a missing key is an error, and nothing is written.
    rc, _, err = run(capsys, promote.main, "--tag=stable", f"--release={make_bundle(tmp_path / 'b', seed=1)}",
                     f"--registry=file://{tmp_path / 'explicit'}")  # fmt: skip
    assert rc == 2 and "no signing key" in one_line_error(err)
    assert not (tmp_path / "explicit").exists()


def test_registry_from_environment(capsys, monkeypatch, registry_uri, registry, tmp_path):
    monkeypatch.setenv("MODELGATE_REGISTRY", registry_uri)
    rc, _, err = run(capsys, promote.main, "--tag=canary", f"--release={make_bundle(tmp_path / 'b')}")
    assert rc == 0, err
    assert registry.read_pointer("tiny_transformer", "canary") is not None


def test_relative_paths_are_taken_from_where_bazel_run_was_started(capsys, monkeypatch, registry_uri, tmp_path):
    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b"))
    user_dir = tmp_path / "user"
    user_dir.mkdir()
    monkeypatch.setenv("BUILD_WORKING_DIRECTORY", str(user_dir))
    rc, _, err = run(capsys, fetch.main, "--model=tiny_transformer", "--tag=stable", "--out=weights", f"--registry={registry_uri}")
    assert rc == 0, err
    assert (user_dir / "weights" / "weights.safetensors").is_file()
    assert not (Path(os.getcwd()) / "weights").exists()


def test_progress_bars_only_on_a_terminal(capsys, monkeypatch, registry_uri, tmp_path):
    rc, _, err = run(capsys, promote.main, "--tag=stable", f"--release={make_bundle(tmp_path / 'b', seed=1)}", f"--registry={registry_uri}")
    assert rc == 0 and err == ""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    rc, _, err = run(capsys, promote.main, "--tag=stable", f"--release={make_bundle(tmp_path / 'b', seed=2)}", f"--registry={registry_uri}")
    assert rc == 0 and "tiny_transformer/weights.safetensors" in err and "4.10k" in err


def test_fetch_into_an_existing_empty_directory(capsys, registry_uri, tmp_path):
    promote_ok(capsys, registry_uri, make_bundle(tmp_path / "b"))
    out = tmp_path / "out"
    out.mkdir()
    rc, _, err = run(capsys, fetch.main, "--model=tiny_transformer", "--tag=stable", f"--out={out}", f"--registry={registry_uri}")
    assert rc == 0, err
    assert (out / "weights.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.fetch-")]  # no temporary left


def test_a_build_promoted_again_with_other_receipts_is_another_release_of_it(capsys, registry_uri, registry, tmp_path):
    # A second CI runner, or a test added after the build was promoted: the same build hash and
    # files, other receipts. It is accepted, recorded as another release of the build, and each
    # tag serves the receipts it was promoted with.
    first = make_bundle(tmp_path / "bundles", directory=tmp_path / "first")
    again = make_bundle(tmp_path / "bundles", directory=tmp_path / "again", test_source="a test added later")
    assert build_hash(first) == build_hash(again)
    receipt = "receipt.model_test_cpu.json"
    assert file_digests(first)[receipt] != file_digests(again)[receipt]
    assert promote_ok(capsys, registry_uri, first, tag="canary")[0]["status"] == "promoted"
    assert promote_ok(capsys, registry_uri, again, tag="stable")[0]["status"] == "promoted"
    assert promote_ok(capsys, registry_uri, again, tag="v1.0.0")[0]["status"] == "promoted"  # the same release: stored once
    keys = [k for k in registry_keys(registry) if "/releases/" in k]
    assert len(keys) == 1 and keys[0].startswith(f"models/tiny_transformer/releases/{build_hash(first)}/")
    for tag, bundle in (("canary", first), ("stable", again), ("v1.0.0", again)):
        out_dir = tmp_path / "deploy" / tag
        rc, _, err = run(capsys, fetch.main, "--model=tiny_transformer", f"--tag={tag}", f"--out={out_dir}", f"--registry={registry_uri}")
        assert rc == 0, err
        assert (out_dir / receipt).read_bytes() == (bundle / receipt).read_bytes(), tag
    events = {e["tag"]: e for e in registry.events("tiny_transformer")}
    assert "release" not in events["canary"] and events["stable"]["release"] == keys[0].rsplit("/", 1)[1].removesuffix(".json")


def test_a_bundle_with_other_weights_under_a_stored_build_hash_is_refused(capsys, registry_uri, registry, tmp_path):
    import shutil

    from modelgate import digests

    first = make_bundle(tmp_path / "bundles", directory=tmp_path / "first")
    promote_ok(capsys, registry_uri, first, tag="canary")
    other = tmp_path / "other"
    shutil.copytree(first, other)
    (other / "weights.safetensors").write_bytes(b"other weights")
    manifest = json.loads((other / "manifest.json").read_text())
    size, sha256, b3 = digests.file_digests(other / "weights.safetensors")
    manifest["files"]["weights.safetensors"] = {"sha256": sha256, "blake3": b3, "size": size}
    (other / "manifest.json").write_text(json.dumps(manifest))
    before = registry_keys(registry)
    rc, _, err = run(capsys, promote.main, "--tag=stable", f"--release={other}", f"--registry={registry_uri}")
    assert rc == 1
    line = one_line_error(err)
    assert f"already holds build {build_hash(first)[:12]} of tiny_transformer with other bytes for weights.safetensors" in line
    assert registry_keys(registry) == before


def test_a_stored_manifest_that_does_not_verify_decides_nothing(capsys, registry_uri, registry, tmp_path):
    # Whether a bundle is another release of a stored build is decided from the stored manifest:
    # one edited behind the registry's back is refused before anything is written, not compared.
    from modelgate.testing.cli import overwrite

    first = make_bundle(tmp_path / "bundles", directory=tmp_path / "first")
    again = make_bundle(tmp_path / "bundles", directory=tmp_path / "again", test_source="a test added later")
    promote_ok(capsys, registry_uri, first, tag="canary")
    key = Registry.build_key("tiny_transformer", build_hash(first))
    doc = json.loads(registry.storage.read(key))
    doc["metrics"]["accuracy"] = 0.5
    overwrite(registry, key, canonical_json(doc))
    before = registry_keys(registry)
    rc, _, err = run(capsys, promote.main, "--tag=stable", f"--release={again}", f"--registry={registry_uri}")
    assert rc == 1 and "does not verify" in one_line_error(err), err
    assert registry_keys(registry) == before


def test_every_caller_of_the_api_goes_through_the_receipt_policy(registry, tmp_path, keys):
    # Promotion policy is one ordered list in modelgate.registry.policy: a caller that skips the CLI
    # (a script, a service promoting a healthy canary) cannot skip the receipt check.
    from modelgate.errors import ModelgateError
    from modelgate.registry import api, bundle as bundles

    untested = make_bundle(tmp_path / "bundles", receipts=False)
    with pytest.raises(ModelgateError, match="the release lists no test receipts, so nothing says its tests passed"):
        api.promote(registry, [bundles.read(untested)], "stable", signing_key=lambda: str(keys["signer"]))
    assert registry.list_models() == []
