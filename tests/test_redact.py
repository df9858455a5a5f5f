"""The Redactor replaces a connection's credentials, and their usual encodings, in any text."""

from __future__ import annotations

import base64
import io
import json
import logging
import random
import time
from urllib.parse import quote, quote_plus

import pytest

from proxy.redact import (
    MIN_SECRET_LENGTH,
    NO_SECRETS,
    REDACTED,
    LogRedaction,
    Redactor,
    secret_forms,
)

TOKEN = "sk-live-9f8e7d6c5b4a3210"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


def test_no_headers_cost_nothing_and_change_nothing() -> None:
    redactor = Redactor.for_headers({})
    assert redactor is NO_SECRETS and not redactor
    text = "an upstream said: Bearer whatever"
    assert redactor.redact(text) is text
    value = {"a": [text, 1, None]}
    assert redactor.redact_json(value) is value
    assert redactor.redact_bytes(b"x") == b"x"


def test_the_whole_value_and_the_credential_after_the_scheme_are_redacted() -> None:
    redactor = Redactor.for_headers(BEARER)
    assert redactor.redact(f"Authorization: Bearer {TOKEN}") == f"Authorization: {REDACTED}"
    assert redactor.redact(f"invalid token {TOKEN}.") == f"invalid token {REDACTED}."
    assert redactor.redact(f"{TOKEN}{TOKEN}") == REDACTED * 2


def test_the_scheme_word_and_other_text_stay() -> None:
    redactor = Redactor.for_headers(BEARER)
    text = "send a Bearer token in the Authorization header"
    assert redactor.redact(text) is text
    assert "Bearer" not in secret_forms(BEARER)


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "Token", "ApiKey", "Splunk"])
def test_any_scheme_word(scheme: str) -> None:
    redactor = Redactor.for_headers({"Authorization": f"{scheme} {TOKEN}"})
    assert redactor.redact(f"got {TOKEN}") == f"got {REDACTED}"


def test_short_values_are_not_secrets() -> None:
    headers = {"X-Feature": "on", "X-Tenant": "acme", "X-Id": "12345"}
    assert all(len(v) < MIN_SECRET_LENGTH for v in headers.values())
    redactor = Redactor.for_headers(headers)
    assert not redactor
    text = "feature on for acme 12345"
    assert redactor.redact(text) is text


def test_plain_api_key_headers() -> None:
    redactor = Redactor.for_headers({"X-API-Key": "abcdef123456", "Accept-Language": "en"})
    assert redactor.redact('{"error":"bad key abcdef123456"}') == '{"error":"bad key [redacted]"}'


def test_base64_forms() -> None:
    redactor = Redactor.for_headers(BEARER)
    for raw in (TOKEN.encode(), f"Bearer {TOKEN}".encode()):
        for encoded in (base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()):
            out = redactor.redact(f"echo: {encoded} end")
            assert encoded.rstrip("=") not in out and REDACTED in out


def test_basic_credentials_decoded_and_password() -> None:
    password = "correct-horse-battery"
    header = "Basic " + base64.b64encode(f"alice:{password}".encode()).decode()
    redactor = Redactor.for_headers({"Authorization": header})
    assert redactor.redact(f"user alice:{password} refused") == f"user {REDACTED} refused"
    assert redactor.redact(f"password {password} is wrong") == f"password {REDACTED} is wrong"
    assert redactor.redact(header) == REDACTED
    assert "alice" in redactor.redact("hello alice")  # the user name alone is not a secret


def test_url_encoded_forms() -> None:
    secret = "p@ss/w0rd+with spaces&more"
    redactor = Redactor.for_headers({"X-Secret": secret})
    for form in (quote(secret, safe=""), quote_plus(secret, safe=""), quote(secret, safe="").lower()):
        assert redactor.redact(f"?token={form}&x=1") == f"?token={REDACTED}&x=1", form


def test_json_escaped_forms() -> None:
    secret = 'quo"te\\back/slash'
    redactor = Redactor.for_headers({"X-Secret": secret})
    body = json.dumps({"message": f"bad secret {secret}"})
    assert secret not in json.loads(redactor.redact(body))["message"]
    assert REDACTED in redactor.redact(body)
    assert redactor.redact(secret.replace("/", "\\/")) == REDACTED


def test_cookie_and_parameter_values() -> None:
    redactor = Redactor.for_headers(
        {"Cookie": "theme=dark; session=0123456789abcdef", "X-Sig": 'a=1, sig="zzzzzzzz"'}
    )
    assert redactor.redact("session 0123456789abcdef expired") == f"session {REDACTED} expired"
    assert redactor.redact("sig zzzzzzzz") == f"sig {REDACTED}"
    assert redactor.redact("theme dark") == "theme dark"


def test_longest_match_wins() -> None:
    redactor = Redactor(["abcdef", "abcdefghij", "xyzabcdef"])
    assert redactor.redact("..abcdefghij..") == f"..{REDACTED}.."
    assert redactor.redact("..abcdefghi..") == f"..{REDACTED}ghi.."
    assert redactor.redact("xyzabcdefghij") == REDACTED + "ghij"


def test_redact_json_walks_strings_and_keys() -> None:
    redactor = Redactor.for_headers(BEARER)
    value = {
        "error": {"code": -32603, "message": f"bad token {TOKEN}", "data": [TOKEN, 3, None, True]},
        TOKEN: "key",
        "fine": "untouched",
    }
    out = redactor.redact_json(value)
    assert TOKEN not in json.dumps(out)
    assert out["error"]["code"] == -32603 and out["error"]["data"][1:] == [3, None, True]
    assert out["fine"] == "untouched" and REDACTED in out
    assert value["error"]["message"] == f"bad token {TOKEN}"  # the input is not modified


def test_redact_json_keeps_unchanged_values_identical() -> None:
    redactor = Redactor.for_headers(BEARER)
    clean = {"a": ["b", {"c": "d"}], "e": 1}
    assert redactor.redact_json(clean) is clean
    mixed = {"a": clean, "b": TOKEN}
    assert redactor.redact_json(mixed)["a"] is clean


def test_redact_bytes() -> None:
    redactor = Redactor.for_headers(BEARER)
    body = f"<pre>Authorization: Bearer {TOKEN}</pre>".encode()
    assert redactor.redact_bytes(body) == b"<pre>Authorization: [redacted]</pre>"
    assert redactor.redact_bytes(b"nothing") == b"nothing"


def test_for_headers_builds_once_per_header_set() -> None:
    assert Redactor.for_headers(dict(BEARER)) is Redactor.for_headers(dict(BEARER))
    assert Redactor.for_headers(BEARER) is not Redactor.for_headers({"Authorization": "Bearer other-token"})


def test_repr_never_shows_secrets() -> None:
    assert TOKEN not in repr(Redactor.for_headers(BEARER))


def test_combine() -> None:
    a = Redactor.for_headers({"A": "first-secret"})
    b = Redactor.for_headers({"B": "second-secret"})
    both = Redactor.combine([a, b, NO_SECRETS])
    assert both.redact("first-secret second-secret") == f"{REDACTED} {REDACTED}"
    assert Redactor.combine([]) is NO_SECRETS


def _reference(words: list[str], text: str) -> str:
    """Leftmost, then longest, non-overlapping replacement, written the slow obvious way."""
    out, i = [], 0
    while i < len(text):
        hits = [w for w in words if text.startswith(w, i)]
        if hits:
            out.append(REDACTED)
            i += max(len(w) for w in hits)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@pytest.mark.parametrize("many", [False, True], ids=["regex", "prefix-index"])
def test_matches_the_obvious_algorithm(many: bool) -> None:
    rng = random.Random(1234)
    for _ in range(200):
        count = rng.randint(300, 400) if many else rng.randint(1, 12)
        words = list({"".join(rng.choice("ab.c") for _ in range(rng.randint(1, 8))) for _ in range(count)})
        text = "".join(rng.choice("ab.cd") for _ in range(rng.randint(0, 60)))
        redactor = Redactor(words)
        assert redactor.redact(text) == _reference(words, text), (words, text)
        assert redactor.redact_bytes(text.encode()) == _reference(words, text).encode()


def test_special_characters_are_literal() -> None:
    words = ["a.b*c", "(x|y)", "[z]{2}", "\\d+$", "^start"]
    redactor = Redactor(words)
    many = Redactor(words + [f"filler-{i}" for i in range(300)])
    for r in (redactor, many):
        for word in words:
            assert r.redact(f"<{word}>") == f"<{REDACTED}>"
        assert r.redact("aXbbc xx zz 11 start") == "aXbbc xx zz 11 start"


def test_long_and_deeply_nested_secrets() -> None:
    long_secret = "x" * 8192
    assert Redactor([long_secret]).redact("<" + long_secret + ">") == f"<{REDACTED}>"
    chain = ["a" * n + "b" for n in range(6, 1500)]  # each a prefix-extension of the last
    redactor = Redactor(chain)
    assert redactor.redact("-" + "a" * 700 + "b-") == f"-{REDACTED}-"


def test_many_secrets_scan_fast() -> None:
    rng = random.Random(7)
    headers = [
        {"Authorization": "Bearer " + "".join(rng.choices("abcdefghijklmnop0123456789", k=40))}
        for _ in range(500)
    ]
    redactor = Redactor.combine(Redactor.for_headers(h) for h in headers)
    secret = headers[234]["Authorization"][7:]
    text = ("lorem ipsum dolor sit amet, " * 4000) + secret
    started = time.perf_counter()
    out = redactor.redact(text)
    elapsed = time.perf_counter() - started
    assert out.endswith(REDACTED) and secret not in out
    assert elapsed < 0.5, f"scanning 112 kB against 500 connections took {elapsed:.3f} s"


# --- the log filter -----------------------------------------------------------------------------


@pytest.fixture
def captured() -> tuple[logging.Logger, io.StringIO, LogRedaction]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    redaction = LogRedaction()
    handler.addFilter(redaction)
    logger = logging.getLogger(f"test.redact.{random.random()}")
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, stream, redaction


def test_log_filter_scrubs_messages_arguments_and_tracebacks(
    captured: tuple[logging.Logger, io.StringIO, LogRedaction],
) -> None:
    logger, stream, redaction = captured
    redaction.remember(("ns", "c"), Redactor.for_headers(BEARER))
    logger.warning("upstream said: invalid token %s (%d tries)", TOKEN, 3)
    logger.warning(f"inline {TOKEN}")
    logger.warning("object %s", ValueError(f"bad {TOKEN}"))
    logger.warning("mapping %(t)s", {"t": TOKEN})
    try:
        raise RuntimeError(f"refused Bearer {TOKEN}")
    except RuntimeError:
        logger.exception("call failed")
    text = stream.getvalue()
    assert TOKEN not in text
    assert "(3 tries)" in text and text.count(REDACTED) >= 5 and "Traceback" in text


def test_log_filter_keeps_argument_tuples_for_formatters(
    captured: tuple[logging.Logger, io.StringIO, LogRedaction],
) -> None:
    logger, _, redaction = captured
    redaction.remember("k", Redactor.for_headers(BEARER))
    record = logger.makeRecord(
        logger.name,
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4", "GET", f"/x?t={TOKEN}", "1.1", 200),
        None,
    )
    assert redaction.filter(record)
    assert isinstance(record.args, tuple) and record.args[4] == 200
    assert record.getMessage() == f'1.2.3.4 - "GET /x?t={REDACTED} HTTP/1.1" 200'


def test_log_filter_without_secrets_leaves_records_alone(
    captured: tuple[logging.Logger, io.StringIO, LogRedaction],
) -> None:
    logger, stream, redaction = captured
    record = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "a %s", ("b",), None)
    assert redaction.filter(record) and record.args == ("b",)
    redaction.remember("k", Redactor.for_headers(BEARER))
    redaction.forget("k")
    logger.info("token %s", TOKEN)
    assert TOKEN in stream.getvalue()


def test_log_filter_follows_changed_credentials(
    captured: tuple[logging.Logger, io.StringIO, LogRedaction],
) -> None:
    logger, stream, redaction = captured
    redaction.remember(("ns", "c"), Redactor.for_headers({"X-Key": "old-secret-1"}))
    redaction.remember(("ns", "d"), Redactor.for_headers({"X-Key": "other-secret-2"}))
    logger.info("old-secret-1 other-secret-2")
    redaction.remember(("ns", "c"), Redactor.for_headers({"X-Key": "new-secret-3"}))
    logger.info("new-secret-3 other-secret-2")
    assert stream.getvalue().splitlines() == [f"INFO {REDACTED} {REDACTED}"] * 2
