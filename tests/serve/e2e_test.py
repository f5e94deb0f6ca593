"""End to end: a real `serve` process, a real registry (local directory or fake GCS), real promote.

promote v1 -> serves v1 -> promote v2 -> notified -> serves v2 -> roll back -> serves v1;
a tampered blob is refused while v1 keeps serving. Notifications that are unsigned, wrongly
signed, stale or replayed are refused and change nothing; polling alone also rolls out.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import torch
from safetensors.torch import load_file

from modelgate import notify
from tests.serve import harness
from tests.serve.bundles import build_hash

ROLLOUT_TIMEOUT_S = 60


def golden_request(bundle: Path) -> dict:
    inputs = load_file(str(bundle / "inputs.safetensors"))
    return {"inputs": {name: value.tolist() for name, value in inputs.items()}}


def assert_answers_like(server: harness.Server, bundle: Path) -> None:
    """/predict on the bundle's golden inputs answers with that build and its golden outputs."""
    status, body = server.post_json("/predict", golden_request(bundle))
    assert status == 200, body
    assert body["build_hash"] == build_hash(bundle)
    expected = load_file(str(bundle / "expected.safetensors"))["logits"]
    torch.testing.assert_close(torch.tensor(body["outputs"]["logits"]), expected, atol=1e-5, rtol=1e-4)


def tamper_blob(registry_uri: str, sha256: str) -> None:
    """Replaces a blob's bytes in the registry (same size, different content)."""
    registry = harness.open_registry(registry_uri)
    key = registry.blob_key(sha256)
    data = bytearray(registry.storage.read(key))
    data[len(data) // 2] ^= 0xFF
    if registry_uri.startswith("file://"):
        path = Path(registry_uri[len("file://") :]) / key
        path.chmod(0o644)
        path.write_bytes(bytes(data))
    else:
        from google.cloud import storage

        uri = urlparse(registry_uri)
        storage.Client().bucket(uri.netloc).blob(f"{uri.path.strip('/')}/{key}").upload_from_string(bytes(data))
    assert hashlib.sha256(registry.storage.read(key)).hexdigest() != sha256


@pytest.mark.parametrize("backend", ["local", "gcs"])
def test_promote_notify_rollback_and_a_tampered_blob(request, backend, releases, keys, servers):
    uri = request.getfixturevalue(f"{backend}_registry")
    v1, v2 = releases["v1"], releases["v2"]
    h1, h2 = build_hash(v1), build_hash(v2)
    server = servers(uri, keys["signer_public"])  # polls hourly: rollouts below come from notifications

    # Nothing promoted yet: not healthy, and /predict says why.
    harness.wait_for(lambda: server.version()["checks"] >= 1, ROLLOUT_TIMEOUT_S, "the first look at the tag")
    status, body = server.get("/healthz")
    assert status == 503
    status, body = server.post_json("/predict", golden_request(v1))
    assert status == 503 and "no build is serving yet" in body["detail"] and "does not exist" in body["detail"]

    result = harness.promote(uri, v1, keys["signer"], notify_urls=[server.notify_url])
    assert result.notified == 1
    version = server.wait_serving(h1, ROLLOUT_TIMEOUT_S)
    assert version["last_rollout"]["trigger"] == "notify"
    assert version["files"]["weights.safetensors"] == json.loads((v1 / "manifest.json").read_text())["files"]["weights.safetensors"]["sha256"]
    assert version["since"] and version["error"] is None
    assert server.get("/healthz")[0] == 200
    assert_answers_like(server, v1)

    harness.promote(uri, v2, keys["signer"], notify_urls=[server.notify_url])
    server.wait_serving(h2, ROLLOUT_TIMEOUT_S)
    assert_answers_like(server, v2)

    harness.rollback(uri, keys["signer"], notify_urls=[server.notify_url])
    server.wait_serving(h1, ROLLOUT_TIMEOUT_S)
    assert_answers_like(server, v1)

    # v2's weights are changed in the registry; promoting v2 again must not deploy them.
    weights = json.loads((v2 / "manifest.json").read_text())["files"]["weights.safetensors"]["sha256"]
    tamper_blob(uri, weights)
    harness.promote(uri, v2, keys["signer"], notify_urls=[server.notify_url])
    version = harness.wait_for(
        lambda: (v := server.version())["last_rollout"]["build_hash"] == h2 and v["last_rollout"]["outcome"] == "refused" and v,
        ROLLOUT_TIMEOUT_S, "the tampered build to be refused",
    )  # fmt: skip
    assert version["build_hash"] == h1
    assert "weights.safetensors does not match the signed manifest" in version["error"]
    assert h2[:12] in version["error"] and f"still serving {h1[:12]}" in version["error"]
    assert server.get("/healthz")[0] == 200
    assert_answers_like(server, v1)
    assert "weights.safetensors does not match the signed manifest" in server.log()
    # Only the serving build's directory is left in the state directory.
    assert [p.name[:12] for p in server.state_dir.iterdir() if p.is_dir()] == [h1[:12]]


def signed(body: bytes, secret: str = harness.SECRET, at: float | None = None) -> dict:
    return {"Content-Type": "application/json", **notify.sign_headers(secret, body, at)}


def test_bad_notifications_are_refused_and_change_nothing(local_registry, releases, keys, servers):
    v1, v2 = releases["v1"], releases["v2"]
    harness.promote(local_registry, v1, keys["signer"])
    server = servers(local_registry, keys["signer_public"])
    server.wait_serving(build_hash(v1), ROLLOUT_TIMEOUT_S)
    harness.promote(local_registry, v2, keys["signer"])  # the tag moves; nobody tells the service
    checks = server.version()["checks"]

    body = notify.encode(notify.make_event(harness.MODEL, "stable", build_hash(v2), build_hash(v1), local_registry))
    url = server.notify_url
    refused = {
        "unsigned": harness.http("POST", url, body, {"Content-Type": "application/json"}),
        "wrong secret": harness.http("POST", url, body, signed(body, secret="not-the-secret")),
        "stale": harness.http("POST", url, body, signed(body, at=time.time() - 3600)),
        "from the future": harness.http("POST", url, body, signed(body, at=time.time() + 3600)),
        "body changed after signing": harness.http("POST", url, body.replace(b"stable", b"stabla"), signed(body)),
        "malformed timestamp": harness.http("POST", url, body, {**signed(body), notify.TIMESTAMP_HEADER: "yesterday"}),
    }
    statuses = {name: status for name, (status, _) in refused.items()}
    print("\nrefused notifications:", json.dumps({k: [s, refused[k][1]["detail"]] for k, s in statuses.items()}, indent=1))
    assert statuses == {
        "unsigned": 401,
        "wrong secret": 403,
        "stale": 403,
        "from the future": 403,
        "body changed after signing": 403,
        "malformed timestamp": 401,
    }
    time.sleep(1.0)  # give a wrongly accepted notification time to show
    version = server.version()
    assert version["build_hash"] == build_hash(v1) and version["checks"] == checks
    assert version["notifications"] == {"accepted": 0, "refused": 6}

    good = signed(body)
    status, answer = harness.http("POST", url, body, good)
    assert status == 202 and answer == {"accepted": True}
    server.wait_serving(build_hash(v2), ROLLOUT_TIMEOUT_S)
    # The new build serves before its check is counted as complete: wait for the count too.
    harness.wait_for(lambda: server.version()["checks"] > checks, ROLLOUT_TIMEOUT_S, "the rollout's check to complete")
    checks = server.version()["checks"]

    status, answer = harness.http("POST", url, body, good)  # the same request again
    print("replayed:", status, answer["detail"])
    assert status == 403 and "replayed" in answer["detail"]
    time.sleep(1.0)
    assert server.version()["checks"] == checks

    # A valid notification for another tag is acknowledged and ignored.
    other = notify.encode(notify.make_event(harness.MODEL, "canary", build_hash(v1), None, local_registry))
    status, answer = harness.http("POST", url, other, signed(other))
    assert status == 200 and answer["accepted"] is False
    assert "refused a notification" in server.log()


def test_polling_rolls_out_without_any_notification(local_registry, releases, keys, servers):
    v1, v2 = releases["v1"], releases["v2"]
    harness.promote(local_registry, v1, keys["signer"])
    server = servers(local_registry, keys["signer_public"], poll_interval_s=0.5, extra_env={"MODELGATE_NOTIFY_SECRET": ""})
    server.wait_serving(build_hash(v1), ROLLOUT_TIMEOUT_S)
    harness.promote(local_registry, v2, keys["signer"])
    version = server.wait_serving(build_hash(v2), ROLLOUT_TIMEOUT_S)
    assert version["last_rollout"]["trigger"] == "poll"
    assert "notifications are disabled" in server.post_json("/notify", {})[1]["detail"]


def _raw_post(server: harness.Server, body_chunks: list[bytes], headers: dict) -> tuple[int, dict]:
    """A POST with exactly these headers (e.g. chunked, or a lying Content-Length)."""
    url = urlparse(server.url)
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        connection.putrequest("POST", "/predict")
        for name, value in headers.items():
            connection.putheader(name, value)
        connection.endheaders()
        for chunk in body_chunks:
            if headers.get("Transfer-Encoding") == "chunked":
                connection.send(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            else:
                connection.send(chunk)
        if headers.get("Transfer-Encoding") == "chunked":
            connection.send(b"0\r\n\r\n")
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_bad_input_is_a_clear_4xx_and_the_service_keeps_serving(local_registry, releases, keys, servers):
    v1 = releases["v1"]
    harness.promote(local_registry, v1, keys["signer"])
    server = servers(local_registry, keys["signer_public"], extra_args=["--max-body-bytes=65536"])
    server.wait_serving(build_hash(v1), ROLLOUT_TIMEOUT_S)
    cases = {
        "malformed JSON": harness.http("POST", server.url + "/predict", b'{"inputs": {"tokens": [[1, 2'),
        "wrong dtype": server.post_json("/predict", {"inputs": {"tokens": [[1.5, 2]], "mask": [[True, True]]}}),
        "wrong rank": server.post_json("/predict", {"inputs": {"tokens": [1, 2], "mask": [[True, True]]}}),
        "declared too large": harness.http("POST", server.url + "/predict", b"[" + b"1," * 40000 + b"1]"),
        "chunked too large": _raw_post(server, [b"[" + b"0," * 8192] * 8, {"Transfer-Encoding": "chunked"}),
    }
    statuses = {name: status for name, (status, _) in cases.items()}
    print("\nbad input:", json.dumps({k: [s, cases[k][1]["detail"]] for k, s in statuses.items()}, indent=1))
    assert statuses == {"malformed JSON": 400, "wrong dtype": 422, "wrong rank": 422, "declared too large": 413, "chunked too large": 413}
    assert "not valid JSON" in cases["malformed JSON"][1]["detail"]
    assert "input 'tokens'" in cases["wrong dtype"][1]["detail"]
    assert "exceeds the limit of 65536 bytes" in cases["chunked too large"][1]["detail"]
    assert server.process.poll() is None
    assert_answers_like(server, v1)


def test_endpoints_configured_in_the_registry_are_notified(local_registry, releases, keys, servers):
    v1, v2 = releases["v1"], releases["v2"]
    harness.promote(local_registry, v1, keys["signer"])
    server = servers(local_registry, keys["signer_public"])
    server.wait_serving(build_hash(v1), ROLLOUT_TIMEOUT_S)
    config = Path(local_registry[len("file://") :]) / "config" / "notify.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({"endpoints": [server.notify_url]}))

    result = harness.promote(local_registry, v2, keys["signer"])  # no --notify: the registry's own list
    assert result.notified == 1
    version = server.wait_serving(build_hash(v2), ROLLOUT_TIMEOUT_S)
    assert version["last_rollout"]["trigger"] == "notify" and version["notifications"]["accepted"] == 1
