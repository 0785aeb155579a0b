"""An independent AWS SigV4 verifier (header signing, HMAC-SHA256), standard library only.

Written from the SigV4 specification, not from the proxy's code: the soak upstream uses it to
check every request the proxy sends. It is deliberately strict about what the proxy promises:

* the query string must arrive already canonical (pairs sorted, every byte outside
  ``A-Za-z0-9-_.~`` percent-encoded with upper-case hex, nothing over-encoded), because the
  proxy claims to send exactly the canonical query string it signs;
* ``x-amz-content-sha256`` must be present, signed, and equal to the SHA-256 of the body;
* ``host`` and ``x-amz-date`` must be signed, and so must ``x-amz-security-token`` when sent.

``python3 sigv4.py [SUITE_DIR]`` runs a self-test: the AWS signing test suite vectors (the
repository keeps a copy in tests/fixtures/sigv4-test-suite) plus tamper checks.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional

ALGORITHM = "AWS4-HMAC-SHA256"
UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.~")
_AUTH_RE = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<cred>[^,\s]+),\s*SignedHeaders=(?P<sh>[^,\s]+),"
    r"\s*Signature=(?P<sig>[0-9a-f]{64})$"
)
_AMZ_DATE_RE = re.compile(r"^\d{8}T\d{6}Z$")
_SPACES_RE = re.compile(r"\s+")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode("utf-8"), hashlib.sha256).digest()


def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    key = _hmac(("AWS4" + secret).encode("utf-8"), date)
    key = _hmac(key, region)
    key = _hmac(key, service)
    return _hmac(key, "aws4_request")


def uri_encode(data: bytes) -> str:
    """SigV4 URI encoding: unreserved bytes stay, everything else is %XX (upper-case hex)."""
    return "".join(chr(b) if b in UNRESERVED else "%%%02X" % b for b in data)


def canonical_uri(raw_path: str, normalize: bool = True) -> str:
    """The canonical URI for every service but S3: the path as received (still
    percent-encoded), dot segments removed when ``normalize``, then each segment URI-encoded
    once more (so ``%20`` becomes ``%2520``)."""
    if not raw_path:
        raw_path = "/"
    segments = raw_path.split("/")
    if normalize:
        out: list[str] = []
        for seg in segments[1:]:
            if seg == ".":
                continue
            if seg == "..":
                if out:
                    out.pop()
                continue
            out.append(seg)
        # Empty segments from '//' collapse, but a trailing slash is kept.
        trailing = raw_path.endswith("/") or segments[-1] in (".", "..")
        out = [s for s in out if s != ""]
        path = "/" + "/".join(out)
        if trailing and path != "/":
            path += "/"
        segments = path.split("/")
    return "/".join(uri_encode(seg.encode("utf-8")) for seg in segments)


def _check_encoded(text: str) -> Optional[str]:
    """None when ``text`` is in SigV4 canonical encoding, else why not."""
    i = 0
    raw = text.encode("utf-8", "surrogateescape")
    while i < len(raw):
        b = raw[i]
        if b == 0x25:  # '%'
            hexpart = raw[i + 1 : i + 3]
            if len(hexpart) != 2 or not all(c in b"0123456789ABCDEF" for c in hexpart):
                return "percent escape %r is not two upper-case hex digits" % hexpart.decode("latin-1")
            if int(hexpart, 16) in UNRESERVED:
                return "unreserved byte %r is percent-encoded" % chr(int(hexpart, 16))
            i += 3
            continue
        if b not in UNRESERVED:
            return "byte %r must be percent-encoded" % chr(b)
        i += 1
    return None


def canonical_query_as_received(raw_query: str) -> tuple[Optional[str], Optional[str]]:
    """(canonical query, None) when the query as received is already canonical, else
    (None, reason). The proxy signs and sends one and the same string, so nothing is
    re-ordered or re-encoded here: a deviation is an error."""
    if raw_query == "":
        return "", None
    pairs = []
    for piece in raw_query.split("&"):
        if piece == "":
            return None, "empty query piece"
        if "=" not in piece:
            return None, "query piece %r has no '='" % piece[:40]
        name, value = piece.split("=", 1)
        for part in (name, value):
            reason = _check_encoded(part)
            if reason:
                return None, "query not canonical: " + reason
        pairs.append((name, value))
    if pairs != sorted(pairs):
        return None, "query pairs are not sorted"
    return raw_query, None


def percent_decode(text: str) -> bytes:
    """Strict percent-decoding (``+`` is a literal plus)."""
    out = bytearray()
    raw = text.encode("utf-8")
    i = 0
    while i < len(raw):
        if raw[i] == 0x25:
            out.append(int(raw[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    return bytes(out)


def canonical_header_value(values: Iterable[str]) -> str:
    return ",".join(_SPACES_RE.sub(" ", v.strip()) for v in values)


def canonical_request(
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    signed_headers: list[str],
    payload_hash: str,
    normalize: bool = True,
) -> str:
    by_name: dict[str, list[str]] = {}
    for name, value in headers:
        by_name.setdefault(name.lower(), []).append(value)
    lines = [method, canonical_uri(path, normalize), query]
    for name in signed_headers:
        lines.append("%s:%s" % (name, canonical_header_value(by_name.get(name, []))))
    lines.append("")
    lines.append(";".join(signed_headers))
    lines.append(payload_hash)
    return "\n".join(lines)


def string_to_sign(amz_date: str, scope: str, creq: str) -> str:
    return "\n".join([ALGORITHM, amz_date, scope, sha256_hex(creq.encode("utf-8"))])


def parse_amz_date(amz_date: str) -> float:
    return float(calendar.timegm(time.strptime(amz_date, "%Y%m%dT%H%M%SZ")))


@dataclass
class Key:
    """A credential the verifier knows (from the credential endpoint)."""

    access_key_id: str
    secret: str
    token: Optional[str] = None
    expiry: Optional[float] = None  # Unix seconds; signatures made at or after it are refused


@dataclass
class Verdict:
    ok: bool
    reason: str = ""
    kind: str = "valid"  # valid | expired | unknown_key | bad_signature | malformed | policy
    access_key_id: Optional[str] = None
    canonical_request: str = ""
    extra: dict = field(default_factory=dict)


def verify(
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes,
    lookup: Callable[[str], Optional[Key]],
    service: str,
    region: Optional[str] = None,
    now: Optional[float] = None,
    max_skew: float = 300.0,
    require_payload_header: bool = True,
    required_signed: Iterable[str] = ("host", "x-amz-date"),
    normalize: bool = True,
) -> Verdict:
    """Checks one received request. ``now=None`` skips the clock-skew check (test vectors)."""
    lower: dict[str, list[str]] = {}
    for name, value in headers:
        lower.setdefault(name.lower(), []).append(value)

    def one(name: str) -> Optional[str]:
        values = lower.get(name)
        return values[0] if values and len(values) == 1 else None

    auth = one("authorization")
    if auth is None:
        return Verdict(False, "missing or repeated Authorization header", "malformed")
    m = _AUTH_RE.match(auth.strip())
    if not m:
        return Verdict(False, "Authorization header is not AWS4-HMAC-SHA256 header form", "malformed")
    cred = m.group("cred").split("/")
    if len(cred) != 5 or cred[4] != "aws4_request":
        return Verdict(False, "bad Credential scope", "malformed")
    akid, date, scope_region, scope_service, _ = cred
    signed = m.group("sh").split(";")
    if signed != sorted(signed) or any(h != h.lower() or not h for h in signed) or len(set(signed)) != len(signed):
        return Verdict(False, "SignedHeaders not lower-case, unique and sorted", "malformed", akid)
    amz_date = one("x-amz-date")
    if amz_date is None or not _AMZ_DATE_RE.match(amz_date):
        return Verdict(False, "missing or malformed x-amz-date", "malformed", akid)
    if amz_date[:8] != date:
        return Verdict(False, "credential scope date differs from x-amz-date", "malformed", akid)
    if scope_service != service:
        return Verdict(False, "scope service %r, expected %r" % (scope_service, service), "policy", akid)
    if region is not None and scope_region != region:
        return Verdict(False, "scope region %r, expected %r" % (scope_region, region), "policy", akid)
    need = set(required_signed)
    if require_payload_header:
        need.add("x-amz-content-sha256")
    if "x-amz-security-token" in lower:
        need.add("x-amz-security-token")
    missing = sorted(need - set(signed))
    if missing:
        return Verdict(False, "not signed: " + ",".join(missing), "policy", akid)
    for name in signed:
        if name not in lower:
            return Verdict(False, "signed header %r is absent" % name, "malformed", akid)

    body_hash = sha256_hex(body)
    declared = one("x-amz-content-sha256")
    if declared is not None and declared != body_hash:
        return Verdict(False, "x-amz-content-sha256 does not match the body", "bad_signature", akid)
    if require_payload_header and declared is None:
        return Verdict(False, "missing x-amz-content-sha256", "malformed", akid)

    canon_query, why = canonical_query_as_received(query)
    if canon_query is None:
        return Verdict(False, why or "bad query", "policy", akid)

    signed_at = parse_amz_date(amz_date)
    if now is not None and abs(now - signed_at) > max_skew:
        return Verdict(False, "x-amz-date is %.0fs away from now" % (now - signed_at), "policy", akid)

    key = lookup(akid)
    if key is None:
        return Verdict(False, "unknown access key id", "unknown_key", akid)
    token = one("x-amz-security-token")
    if key.token is not None and token != key.token:
        return Verdict(False, "x-amz-security-token does not belong to the access key", "bad_signature", akid)

    creq = canonical_request(method, path, canon_query, headers, signed, body_hash, normalize)
    scope = "/".join([date, scope_region, scope_service, "aws4_request"])
    sts = string_to_sign(amz_date, scope, creq)
    expected = hmac.new(signing_key(key.secret, date, scope_region, scope_service), sts.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, m.group("sig")):
        return Verdict(False, "signature mismatch", "bad_signature", akid, creq)
    if key.expiry is not None and signed_at >= key.expiry:
        return Verdict(
            False,
            "signed at %s with a key that expired %.0fs earlier" % (amz_date, signed_at - key.expiry),
            "expired",
            akid,
            creq,
        )
    return Verdict(True, "", "valid", akid, creq, {"signed_at": signed_at, "region": scope_region})


# ---- self-test ---------------------------------------------------------------------------

_VECTORS = [
    "get-vanilla",
    "get-vanilla-query",
    "get-vanilla-query-unreserved",
    "get-vanilla-empty-query-key",
    "get-vanilla-with-session-token",
    "get-header-value-trim",
    "get-header-key-duplicate",
    "get-header-value-order",
    "get-utf8",
    "get-space-normalized",
    "get-slashes-normalized",
    "get-relative-relative-normalized",
    "post-vanilla",
    "post-vanilla-query",
    "post-header-key-sort",
    "post-header-key-case",
    "post-header-value-case",
    "post-x-www-form-urlencoded",
    "post-x-www-form-urlencoded-parameters",
]


def _parse_signed_request(raw: bytes):
    head, _, body = raw.partition(b"\n\n") if b"\r\n\r\n" not in raw else raw.partition(b"\r\n\r\n")
    lines = head.decode("utf-8").replace("\r\n", "\n").split("\n")
    first = lines[0]
    method, rest = first.split(" ", 1)
    target = rest.rsplit(" ", 1)[0] if rest.endswith(("HTTP/1.1", "HTTP/1.0")) else rest
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line[:1] in (" ", "\t") and headers:  # obsolete folding
            n, v = headers[-1]
            headers[-1] = (n, v + " " + line.strip())
            continue
        name, _, value = line.partition(":")
        headers.append((name, value))
    path, _, query = target.partition("?")
    return method, path, query, headers, body


def self_test(suite_dir: Optional[str]) -> int:
    checked = 0
    secret = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
    if suite_dir and os.path.isdir(suite_dir):
        for name in _VECTORS:
            case = os.path.join(suite_dir, name)
            if not os.path.isdir(case):
                continue
            with open(os.path.join(case, "context.json")) as f:
                ctx = json.load(f)
            with open(os.path.join(case, "header-signed-request.txt"), "rb") as f:
                method, path, query, headers, body = _parse_signed_request(f.read())
            with open(os.path.join(case, "header-canonical-request.txt")) as f:
                want_creq = f.read()
            creds = ctx["credentials"]
            key = Key(creds["access_key_id"], creds["secret_access_key"], creds.get("token"))
            v = verify(
                method, path, query, headers, body, lambda a, k=key: k if a == k.access_key_id else None,
                ctx["service"], ctx["region"], require_payload_header=bool(ctx.get("sign_body")),
                normalize=ctx.get("normalize", True),
            )
            if not v.ok or v.canonical_request != want_creq:
                print("sigv4 self-test FAILED on %s: %s\n%s\n--- expected ---\n%s" % (name, v.reason, v.canonical_request, want_creq))
                return 1
            checked += 1
    # Built-in vector (get-vanilla-with-session-token) so the test runs without the suite.
    token = "6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"
    key = Key("AKIDEXAMPLE", secret, token, expiry=parse_amz_date("20150830T123600Z") + 3600)
    base = [
        ("Host", "example.amazonaws.com"),
        ("X-Amz-Security-Token", token),
        ("X-Amz-Date", "20150830T123600Z"),
        ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
         "SignedHeaders=host;x-amz-date;x-amz-security-token, "
         "Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8"),
    ]
    look = lambda a: key if a == key.access_key_id else None  # noqa: E731
    ok = verify("GET", "/", "", base, b"", look, "service", "us-east-1", require_payload_header=False)
    if not ok.ok:
        print("sigv4 self-test FAILED on the built-in vector: " + ok.reason)
        return 1
    checked += 1
    tampered = {
        "method": verify("POST", "/", "", base, b"", look, "service", "us-east-1", require_payload_header=False),
        "path": verify("GET", "/x", "", base, b"", look, "service", "us-east-1", require_payload_header=False),
        "query": verify("GET", "/", "a=1", base, b"", look, "service", "us-east-1", require_payload_header=False),
        "host": verify("GET", "/", "", [("Host", "evil.example")] + base[1:], b"", look, "service", "us-east-1",
                       require_payload_header=False),
        "token": verify("GET", "/", "", [base[0], ("X-Amz-Security-Token", "x")] + base[2:], b"", look, "service",
                        "us-east-1", require_payload_header=False),
        "secret": verify("GET", "/", "", base, b"", lambda a: Key(a, secret + "x", token), "service", "us-east-1",
                         require_payload_header=False),
        "region": verify("GET", "/", "", base, b"", look, "service", "eu-west-1", require_payload_header=False),
        "expired": verify("GET", "/", "", base, b"", lambda a: Key(a, secret, token, parse_amz_date("20150830T123600Z")),
                          "service", "us-east-1", require_payload_header=False),
        "payload-header": verify("GET", "/", "", base, b"", look, "service", "us-east-1"),
        "skew": verify("GET", "/", "", base, b"", look, "service", "us-east-1", now=time.time(),
                       require_payload_header=False),
    }
    for what, verdict in tampered.items():
        if verdict.ok:
            print("sigv4 self-test FAILED: tampered %s was accepted" % what)
            return 1
        checked += 1
    if tampered["expired"].kind != "expired":
        print("sigv4 self-test FAILED: expired key reported as %s" % tampered["expired"].kind)
        return 1
    for good, bad in [
        ("a=1&b=2", "b=2&a=1"),
        ("customerIdentifier=Atza%7CIwEBIA%2Bx%2Fyz%3D%3D", "customerIdentifier=Atza%7cIwEBIA%2Bx%2Fyz%3D%3D"),
        ("k=~%21", "k=%7E%21"),
        ("flag=", "flag"),
        ("q=a%2Bb", "q=a+b"),
    ]:
        if canonical_query_as_received(good)[0] != good or canonical_query_as_received(bad)[0] is not None:
            print("sigv4 self-test FAILED: canonical query check on %r / %r" % (good, bad))
            return 1
        checked += 1
    print("sigv4 self-test: %d checks passed" % checked)
    return 0


if __name__ == "__main__":
    sys.exit(self_test(sys.argv[1] if len(sys.argv) > 1 else None))
