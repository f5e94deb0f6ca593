"""Signing and verifying build manifests with OpenSSF model-signing and a local EC key (offline).

What is signed is the build manifest (builds/<hash>.json without its "signature" field, as canonical
JSON). The manifest lists the sha256 (the blob's address), blake3 (the digest fetch checks it by;
absent in builds recorded before it) and size of every file, so the signature covers the weights
too, the way an OCI image signature covers its layers; fetch checks each file against the manifest.

model-signing signs directories, so the manifest is written as the only file of a temporary
directory named `manifest`. The signature is model-signing's own bundle (a DSSE envelope), stored
inline in the build manifest and written next to the fetched files as manifest.sig, so a deployed
directory can be re-checked with the upstream tool:
    model_signing verify key DIR --signature DIR/manifest.sig --public_key KEY --ignore_unsigned_files

Only the key methods are used: model-signing's default (Sigstore) method needs the internet.
Keys are EC P-256/384/521 PEM files; model-signing refuses ed25519.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from modelgate.errors import ModelgateError, UsageError, VerificationError
from modelgate.formats import RELEASE_MANIFEST, canonical_json

ENV_SIGNING_KEY = "MODELGATE_SIGNING_KEY"
ENV_PUBLIC_KEY = "MODELGATE_PUBLIC_KEY"
SIGNATURE_FORMAT = "model-signing/ec-key@1"
DEV_KEY_DIR = Path(".modelgate") / "keys"
DEV_PRIVATE_KEY = "dev-signing-key.pem"
DEV_PUBLIC_KEY = "dev-signing-key.pub.pem"
_SIGNED_FILE = RELEASE_MANIFEST  # a fetched build's manifest.json, re-checkable with model_signing


def signed_bytes(build: dict) -> bytes:
    """What the signature of a build manifest covers: everything but the signature itself."""
    return canonical_json({k: v for k, v in build.items() if k != "signature"})


@dataclass(frozen=True)
class KeyPair:
    private_key: Path
    public_key: Path


def _key_from_setting(value: str, what: str, tmp: Path) -> Path:
    """A key setting is a path to a PEM file or, from the environment, the PEM text itself."""
    if value.lstrip().startswith("-----BEGIN"):
        path = tmp / what
        path.write_text(value)
        return path
    path = Path(value).expanduser()
    if not path.is_file():
        raise UsageError(f"{what} {value!r} does not exist or is not a file")
    return path


_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def _check_key(path: Path, setting: str, *, private: bool) -> None:
    """Refuses, in one line, a key that model-signing cannot use (it would fail with a traceback)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UsageError(f"{setting} cannot be read ({e.strerror or type(e).__name__})") from None
    _parse_key(data, setting, private=private)


def _parse_key(data: bytes, setting: str, *, private: bool):
    """The EC key in PEM `data`; UsageError, in one line naming `setting`, for anything else."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(data, None) if private else serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as e:
        reason = str(e).split(". ")[0] if str(e) else type(e).__name__
        kind = "an unencrypted private" if private else "a public"
        raise UsageError(f"{setting} is not {kind} key in PEM ({reason})") from None
    curve = getattr(getattr(key, "curve", None), "name", None)
    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)) or curve not in _CURVES:
        kind = curve or type(key).__name__.replace("PrivateKey", "").replace("PublicKey", "")
        raise UsageError(f"{setting}: {kind} keys are not supported; model-signing needs an EC P-256/384/521 key")
    return key


@contextlib.contextmanager
def _staged(content: bytes):
    with tempfile.TemporaryDirectory(prefix="modelgate-sign-") as tmp:
        model_dir = Path(tmp) / "manifest"
        model_dir.mkdir()
        (model_dir / _SIGNED_FILE).write_bytes(content)
        yield Path(tmp), model_dir


def _model_signing():
    try:
        from model_signing import signing, verifying
    except ImportError as e:  # pyopenssl is an undeclared dependency of model-signing
        raise ModelgateError(f"model-signing is not usable here ({e}); install model-signing and pyopenssl") from e
    return signing, verifying


def sign(build: dict, private_key: str) -> dict:
    """The signature record to store under build["signature"]."""
    signing, _ = _model_signing()
    with _staged(signed_bytes(build)) as (tmp, model_dir):
        key = _key_from_setting(private_key, "signing key", tmp)
        _check_key(key, f"signing key {_describe(private_key, ENV_SIGNING_KEY)}", private=True)
        signature = tmp / "manifest.sig"
        signing.Config().use_elliptic_key_signer(private_key=key).sign(model_dir, signature)
        bundle = json.loads(signature.read_bytes())
    return {"format": SIGNATURE_FORMAT, "key_hint": _key_hint(bundle), "bundle": bundle}


def verify(build: dict, public_key: str, describe: str | None = None) -> None:
    """Raises VerificationError unless build["signature"] is a valid signature of this manifest.
    `describe` names the key in the message (default: the setting it came from)."""
    record = build.get("signature")
    if not isinstance(record, dict) or not record.get("bundle"):
        raise VerificationError("the manifest is not signed")
    if record.get("format") != SIGNATURE_FORMAT:
        raise VerificationError(f"unknown signature format {record.get('format')!r}")
    _, verifying = _model_signing()
    with _staged(signed_bytes(build)) as (tmp, model_dir):
        key = _key_from_setting(public_key, "public key", tmp)
        described = describe or _describe(public_key, ENV_PUBLIC_KEY)
        _check_key(key, f"public key {described}", private=False)
        signature = tmp / "manifest.sig"
        signature.write_bytes(canonical_json(record["bundle"]))
        try:
            verifying.Config().use_elliptic_key_verifier(public_key=key).verify(model_dir, signature)
        except Exception as e:  # noqa: BLE001 - model-signing raises ValueError and friends on any mismatch
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            if "Hash mismatch" in reason or "Signature mismatch" in reason:
                reason = "the manifest was changed after it was signed"
            raise VerificationError(f"the manifest signature does not verify with public key {described}: {reason}") from e


def signature_file_bytes(build: dict) -> bytes:
    return canonical_json(build["signature"]["bundle"])


def _key_hint(bundle: dict) -> str:
    return bundle.get("verificationMaterial", {}).get("publicKey", {}).get("hint", "")


def _describe(key: str, env: str) -> str:
    return f"${env}" if key.lstrip().startswith("-----BEGIN") else key


# --------------------------------------------------------------------------------------------------
# Which keys to use


def dev_keypair(workspace: Path) -> KeyPair:
    d = workspace / DEV_KEY_DIR
    return KeyPair(d / DEV_PRIVATE_KEY, d / DEV_PUBLIC_KEY)


def ensure_dev_keypair(workspace: Path) -> tuple[KeyPair, bool]:
    """The workspace's development key pair, created on first use. Returns (keys, created_now)."""
    keys = dev_keypair(workspace)
    if keys.private_key.is_file() and keys.public_key.is_file():
        return keys, False
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    keys.private_key.parent.mkdir(parents=True, exist_ok=True)
    with open(keys.private_key.parent / ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two first promotions at once must not mix two key pairs
        if keys.private_key.is_file() and keys.public_key.is_file():
            return keys, False
        key = ec.generate_private_key(ec.SECP256R1())
        private = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        _write_private(keys.private_key, private)
        keys.public_key.write_bytes(public)
    return keys, True


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def signing_key_setting(flag: str | None, *, allow_dev_key: bool, workspace: Path, warn) -> str:
    """--signing-key, else $MODELGATE_SIGNING_KEY, else (local default registry only) the dev key."""
    value = flag or os.environ.get(ENV_SIGNING_KEY)
    if value:
        return value
    if not allow_dev_key:
        raise UsageError(
            f"no signing key: pass --signing-key=PEM or set ${ENV_SIGNING_KEY} "
            "(an EC P-256 private key; development keys are only generated for the workspace's own registry)"
        )
    keys, created = ensure_dev_keypair(workspace)
    if created:
        warn(
            f"generated a development signing key pair in {keys.private_key.parent} (git-ignored); "
            f"fetch from this registry verifies with {keys.public_key.name}"
        )
    return str(keys.private_key)


def public_key_setting(flag: str | None, *, allow_dev_key: bool, workspace: Path) -> str:
    """--public-key, else $MODELGATE_PUBLIC_KEY, else (local default registry only) the dev public key."""
    value = flag or os.environ.get(ENV_PUBLIC_KEY)
    if value:
        return value
    if allow_dev_key:
        keys = dev_keypair(workspace)
        if keys.public_key.is_file():
            return str(keys.public_key)
        raise UsageError(
            f"no public key: pass --public-key=PEM or set ${ENV_PUBLIC_KEY} "
            f"(the development key {keys.public_key} is created by the first promote to this registry)"
        )
    raise UsageError(f"no public key to verify signatures with: pass --public-key=PEM or set ${ENV_PUBLIC_KEY}")



# --------------------------------------------------------------------------------------------------
# Signed records: history events and tag pointers
#
# A build manifest is signed with model-signing (a DSSE bundle over a staged directory), because
# that is what a deployed directory is re-checked with. History events and tag pointers are small
# JSON records written on every promotion and read on every fetch and poll: they carry a plain
# ECDSA signature, made with the same EC key, over their canonical JSON without the "signature"
# field:
#     "signature": {"format": "modelgate/ecdsa@1", "keyid": <sha256 of the public key's DER>, "sig": <base64>}

RECORD_SIGNATURE_FORMAT = "modelgate/ecdsa@1"


def _key_bytes(value: str, what: str) -> bytes:
    if value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    path = Path(value).expanduser()
    try:
        return path.read_bytes()
    except OSError:
        raise UsageError(f"{what} {value!r} does not exist or is not a file") from None


def _hash_for(curve_name: str):
    from cryptography.hazmat.primitives import hashes

    return {"secp256r1": hashes.SHA256, "secp384r1": hashes.SHA384, "secp521r1": hashes.SHA512}[curve_name]()


def _keyid(public_key) -> str:
    import hashlib

    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def _load_key(value: str, *, private: bool):
    what, env = ("signing key", ENV_SIGNING_KEY) if private else ("public key", ENV_PUBLIC_KEY)
    return _parse_key(_key_bytes(value, what), f"{what} {_describe(value, env)}", private=private)


def record_bytes(record: dict) -> bytes:
    """What a record's signature covers: the record without its "signature" field, canonical JSON."""
    return canonical_json({k: v for k, v in record.items() if k != "signature"})


class RecordVerifier:
    """Checks the signature of history events and tag pointers against one public key."""

    def __init__(self, public_key: str, describe: str | None = None):
        self._key = _load_key(public_key, private=False)
        self.keyid = _keyid(self._key)
        self.public_key = public_key  # the setting (a path or PEM text): manifests are verified with it too
        self.setting = describe or _describe(public_key, ENV_PUBLIC_KEY)

    def verify(self, record: dict, what: str) -> None:
        import base64
        import binascii

        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric import ec

        sig = record.get("signature")
        if not isinstance(sig, dict) or not isinstance(sig.get("sig"), str):
            raise VerificationError(f"{what} is not signed (trust nothing the registry says without a signature)")
        if sig.get("format") != RECORD_SIGNATURE_FORMAT:
            raise VerificationError(f"{what}: unknown signature format {sig.get('format')!r}")
        try:
            raw = base64.b64decode(sig["sig"], validate=True)
            self._key.verify(raw, record_bytes(record), ec.ECDSA(_hash_for(self._key.curve.name)))
        except (InvalidSignature, binascii.Error, ValueError):
            raise VerificationError(
                f"{what}: signature does not verify with public key {self.setting} (changed, forged, or signed by another key)"
            ) from None


class RecordSigner:
    """Signs history events and tag pointers with the promoter's EC private key."""

    def __init__(self, private_key: str):
        self._key = _load_key(private_key, private=True)
        self.keyid = _keyid(self._key.public_key())

    def sign(self, record: dict) -> dict:
        """The record with its "signature" field set."""
        import base64

        from cryptography.hazmat.primitives.asymmetric import ec

        unsigned = {k: v for k, v in record.items() if k != "signature"}
        raw = self._key.sign(record_bytes(unsigned), ec.ECDSA(_hash_for(self._key.curve.name)))
        return {**unsigned, "signature": {"format": RECORD_SIGNATURE_FORMAT, "keyid": self.keyid, "sig": base64.b64encode(raw).decode()}}

    def verifier(self) -> "RecordVerifier":
        from cryptography.hazmat.primitives import serialization

        pem = self._key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        return RecordVerifier(pem.decode(), describe="of the signing key")
