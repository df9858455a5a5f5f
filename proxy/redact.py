"""Keep stored credentials out of everything the gateway says: responses, statuses, logs.

Upstreams echo what they were sent (an initialize error quoting the bad token, an HTTP 500 page
dumping the request headers). A `Redactor` is built once per connection from its header values
and replaces each secret, and its obvious encodings, with ``[redacted]``:

- the whole value, and the credential after a scheme word (``Bearer``, ``Basic``, ``Token`` ...);
- for ``Basic``, the decoded ``user:password`` and the password;
- the values of ``name=value`` parts (cookies, ``Digest`` parameters);
- each of those base64-encoded (standard and URL-safe alphabets), percent-encoded, JSON-escaped.

Strings shorter than `MIN_SECRET_LENGTH` are not secrets (a 3-letter value would redact common
words). A connection's forms go into one compiled regular expression, built once per header
set; a connection without headers costs nothing. The log filter's union of every connection's
secrets uses a prefix index instead (linear scan, no compile), whatever their number.

`LOG_REDACTION` is the process-wide logging filter: the directory tells it each connection's
redactor, and `install()` puts it on the handlers, so no log line (or traceback) carries a
credential the gateway holds.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import re
from collections.abc import Hashable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus

REDACTED = "[redacted]"
_REDACTED_BYTES = REDACTED.encode()
MIN_SECRET_LENGTH = 6
# A scheme word then a credential: "Bearer abc", "Basic dXNlcjpwdw==", "token abc".
_SCHEME = re.compile(r"\s*[A-Za-z][A-Za-z0-9!#$%&'*+.^_`|~-]*\s+(\S.*?)\s*$", re.DOTALL)
_PARTS = re.compile(r"[;,&\s]+")
_HEX_ESCAPE = re.compile(r"%[0-9A-F]{2}")


def _credentials(value: str) -> set[str]:
    """The strings inside one header value that are secrets (before encodings)."""
    found = {value, value.strip()}
    scheme = _SCHEME.match(value)
    if scheme is not None:
        credential = scheme.group(1)
        found.add(credential)
        if value.lstrip()[:6].lower() == "basic ":
            try:
                decoded = base64.b64decode(credential + "=" * (-len(credential) % 4)).decode()
            except (binascii.Error, ValueError, UnicodeDecodeError):
                decoded = ""
            if decoded:
                found.add(decoded)
                found.add(decoded.partition(":")[2])
    for part in _PARTS.split(value):
        name, eq, rest = part.partition("=")
        if eq and name:
            found.add(rest.strip('"'))
    return {s for s in found if len(s) >= MIN_SECRET_LENGTH}


def _encodings(secret: str) -> set[str]:
    """`secret` as an upstream might write it back: verbatim, or in one of the usual encodings."""
    raw = secret.encode()
    forms = {
        secret,
        json.dumps(secret)[1:-1],
        secret.replace("/", "\\/"),
        # Unpadded: the padded form contains it, and so does a longer value's encoding prefix.
        base64.b64encode(raw).decode().rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    }
    for encoded in (quote(secret, safe=""), quote_plus(secret, safe="")):
        forms.add(encoded)
        forms.add(_HEX_ESCAPE.sub(lambda m: m.group(0).lower(), encoded))
    return forms


def secret_forms(headers: Mapping[str, str]) -> frozenset[str]:
    """Every string a `Redactor` for these headers replaces."""
    forms: set[str] = set()
    for value in headers.values():
        if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
            for secret in _credentials(value):
                forms |= _encodings(secret)
    return frozenset(f for f in forms if len(f) >= MIN_SECRET_LENGTH)


# Up to this many forms (a few dozen connections) one regular expression finds them all fastest;
# beyond, compiling costs seconds, and a scan that looks each position up by its first characters
# is linear in the text whatever the number of secrets.
_REGEX_MAX_FORMS = 256


class _PrefixIndex:
    """Finds many literal words in one pass: each position's first `width` characters are looked
    up in a dict of the words starting so, longest first."""

    __slots__ = ("_width", "_words")

    def __init__(self, words: Iterable[Any]):
        ordered = sorted(words, key=len, reverse=True)
        self._width = min(len(w) for w in ordered)
        self._words: dict[Any, list[Any]] = {}
        for word in ordered:
            self._words.setdefault(word[: self._width], []).append(word)

    def sub(self, replacement: Any, text: Any) -> Any:
        width, lookup = self._width, self._words.get
        pieces: list[Any] = []
        i, last, end = 0, 0, len(text) - width
        while i <= end:
            candidates = lookup(text[i : i + width])
            if candidates is not None:
                for word in candidates:
                    if text.startswith(word, i):
                        pieces += (text[last:i], replacement)
                        i = last = i + len(word)
                        break
                else:
                    i += 1
            else:
                i += 1
        if not pieces:
            return text
        pieces.append(text[last:])
        return text[:0].join(pieces)


def _matcher(words: Iterable[Any]) -> re.Pattern[Any] | _PrefixIndex:
    ordered = sorted(words, key=lambda w: (-len(w), w))  # the longest of several at one place wins
    if len(ordered) > _REGEX_MAX_FORMS:
        return _PrefixIndex(ordered)
    bar = b"|" if isinstance(ordered[0], bytes) else "|"
    return re.compile(bar.join(re.escape(w) for w in ordered))


class Redactor:
    """Replaces a fixed set of secrets, wherever they occur in a text, with ``[redacted]``.

    Build it once (`for_headers` caches per header set); `redact`, `redact_bytes` and
    `redact_json` are pure. An empty redactor is falsy and returns its input unchanged.
    """

    __slots__ = ("_forms", "_matcher", "_bytes_matcher")

    def __init__(self, forms: Iterable[str] = ()):
        self._forms = frozenset(f for f in forms if f)
        self._matcher = _matcher(self._forms) if self._forms else None
        self._bytes_matcher: re.Pattern[bytes] | _PrefixIndex | None = None

    @classmethod
    def for_headers(cls, headers: Mapping[str, str]) -> Redactor:
        """The redactor for a connection's headers (one instance per distinct header set)."""
        if not headers:
            return NO_SECRETS
        return _for_items(tuple(sorted(headers.items())))

    @classmethod
    def combine(cls, redactors: Iterable[Redactor]) -> Redactor:
        """One redactor that replaces what any of `redactors` replaces."""
        forms: set[str] = set()
        for redactor in redactors:
            forms |= redactor._forms
        return cls(forms) if forms else NO_SECRETS

    def __bool__(self) -> bool:
        return self._matcher is not None

    def __repr__(self) -> str:
        return f"<Redactor of {len(self._forms)} secret forms>"  # never the secrets themselves

    def redact(self, text: str) -> str:
        """`text` with every secret replaced; the same object when there is nothing to replace."""
        matcher = self._matcher
        if matcher is None or not text:
            return text
        return matcher.sub(REDACTED, text)  # type: ignore[no-any-return]

    def redact_bytes(self, data: bytes) -> bytes:
        """`redact` for raw bytes (an HTTP body), matching the secrets' UTF-8 forms."""
        if self._matcher is None or not data:
            return data
        if self._bytes_matcher is None:
            self._bytes_matcher = _matcher(w.encode() for w in self._forms)
        return self._bytes_matcher.sub(_REDACTED_BYTES, data)  # type: ignore[no-any-return]

    def redact_json(self, value: Any) -> Any:
        """A JSON value (dicts, lists, strings, numbers) with secrets replaced in every string,
        keys included; unchanged parts (and an unchanged whole) are the same objects."""
        if self._matcher is None:
            return value
        return self._walk(value)

    def _walk(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            items = [(self._walk(k), self._walk(v)) for k, v in value.items()]
            if all(nk is k and nv is v for (nk, nv), (k, v) in zip(items, value.items(), strict=True)):
                return value
            return dict(items)
        if isinstance(value, list | tuple):
            walked = [self._walk(v) for v in value]
            if all(n is o for n, o in zip(walked, value, strict=True)):
                return value
            return type(value)(walked)
        return value


NO_SECRETS = Redactor()


@functools.lru_cache(maxsize=4096)
def _for_items(items: tuple[tuple[str, str], ...]) -> Redactor:
    forms = secret_forms(dict(items))
    return Redactor(forms) if forms else NO_SECRETS


class LogRedaction(logging.Filter):
    """A handler filter that scrubs each record (message, arguments, traceback) of the secrets of
    every connection the gateway has opened. Free while there are none."""

    def __init__(self) -> None:
        super().__init__()
        self._by_key: dict[Hashable, Redactor] = {}
        self._combined: Redactor | None = NO_SECRETS

    def remember(self, key: Hashable, redactor: Redactor) -> None:
        """Scrub `redactor`'s secrets from now on (replacing what was remembered for `key`)."""
        if self._by_key.get(key) is not redactor:
            self._by_key[key] = redactor
            self._combined = None  # rebuilt on the next record, not on every change

    def forget(self, key: Hashable) -> None:
        if self._by_key.pop(key, None) is not None:
            self._combined = None

    def install(self, *logger_names: str) -> None:
        """Add this filter to the handlers of the root logger and of the named loggers."""
        for name in ("", *logger_names):
            for handler in logging.getLogger(name).handlers:
                if self not in handler.filters:
                    handler.addFilter(self)

    def redactor(self) -> Redactor:
        combined = self._combined
        if combined is None:
            combined = self._combined = Redactor.combine(self._by_key.values())
        return combined

    def filter(self, record: logging.LogRecord) -> bool:
        redactor = self.redactor()
        if not redactor:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a broken format string: the handler reports it, without arguments
            record.msg, record.args = redactor.redact(str(record.msg)), None
            message = record.msg
        clean = redactor.redact(message)
        if clean is not message and clean != message:
            # Keep the arguments where possible (uvicorn's access formatter reads them); if a
            # secret only shows once they are formatted, log the scrubbed text instead.
            record.msg = redactor.redact(record.msg) if isinstance(record.msg, str) else clean
            if isinstance(record.args, Mapping):
                record.args = {k: _clean_arg(redactor, v) for k, v in record.args.items()}
            elif isinstance(record.args, tuple):
                record.args = tuple(_clean_arg(redactor, a) for a in record.args)
            try:
                leaked = redactor.redact(again := record.getMessage()) != again
            except Exception:
                leaked = True
            if leaked:
                record.msg, record.args = clean, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redactor.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redactor.redact(record.stack_info)
        return True


def _clean_arg(redactor: Redactor, arg: Any) -> Any:
    return redactor.redact(arg) if isinstance(arg, str) else arg


LOG_REDACTION = LogRedaction()
