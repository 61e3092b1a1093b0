"""Signed release bundles, checked offline.

A bundle is ``{"format", "release", "public_key", "signature"}``; the signature (Ed25519) is
over the canonical text of ``release``: JSON with every object's keys sorted, no whitespace,
strings escaped only where JSON requires it, and numbers exactly as written in the bundle.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Union

BUNDLE_FORMAT = "secretum-release-bundle/1"


class ReleaseBundle(dict):
    """A bundle as a dict, keeping the exact text it came as (``.text``): save that to cite it;
    re-serializing the dict could write its numbers differently."""

    def __init__(self, text: str) -> None:
        super().__init__(json.loads(text))
        self.text = text


class BundleNotVerified(Exception):
    """The bundle was changed after it was signed, or was not signed with the given key."""


class _Number(str):
    """A JSON number kept as its text, so that the canonical form is byte-exact."""


def _canonical(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ",".join(json.dumps(k, ensure_ascii=False) + ":" + _canonical(v[k]) for k in sorted(v)) + "}"
    if isinstance(v, list):
        return "[" + ",".join(_canonical(x) for x in v) + "]"
    if isinstance(v, _Number):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    return str(v)


def _parse(text: str) -> Dict[str, Any]:
    return json.loads(text, parse_float=_Number, parse_int=_Number)


def verify_bundle(bundle: Union[str, bytes, Dict[str, Any]], public_key: str) -> Dict[str, Any]:
    """Check a bundle (its JSON text, or the file's path) with the warehouse's public key (64 hex
    digits, from ``secretum info`` or ``/v1/signing-key``); return the verified release, or raise
    :class:`BundleNotVerified` saying what failed. Needs nothing but the bundle and the key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if isinstance(bundle, ReleaseBundle):
        bundle = bundle.text
    elif isinstance(bundle, dict):
        bundle = json.dumps(bundle)
    if isinstance(bundle, bytes):
        bundle = bundle.decode("utf-8")
    if not bundle.lstrip().startswith("{"):
        with open(bundle, encoding="utf-8") as fh:
            bundle = fh.read()
    b = _parse(bundle)
    if b.get("format") != BUNDLE_FORMAT:
        raise BundleNotVerified(f"not a secretum release bundle (format is not {BUNDLE_FORMAT})")
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key.strip()))
    except ValueError as e:
        raise BundleNotVerified(f"the public key is not 64 hex digits: {e}") from None
    if str(b.get("public_key", public_key)).lower() != public_key.strip().lower():
        raise BundleNotVerified("the bundle names another signing key than the one given")
    try:
        signature = bytes.fromhex(str(b.get("signature", "")))
        key.verify(signature, _canonical(b["release"]).encode("utf-8"))
    except (InvalidSignature, ValueError, KeyError):
        raise BundleNotVerified("the signature does not match the release: changed after signing, or signed by another key") from None
    return json.loads(bundle)["release"]
