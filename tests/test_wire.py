"""The wire module, byte by byte: SSE framing, JSON-RPC rules, headers, era shaping."""

from __future__ import annotations

import pytest

from proxy import wire
from proxy.wire import Notification, Request, Response, SSEBlocks, SSEEvent, SSEParser, WireError


def parse_all(data: bytes, *, split: int | None = None) -> list[SSEEvent]:
    parser = SSEParser()
    if split is None:
        return parser.feed(data) + parser.end()
    return parser.feed(data[:split]) + parser.feed(data[split:]) + parser.end()


def parse_bytewise(data: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for i in range(len(data)):
        events += parser.feed(data[i : i + 1])
    return events + parser.end()


# --- SSE ---------------------------------------------------------------------------------------
TS_SDK_STREAM = (
    b"id: 1_abc\ndata: \n\n"  # the TypeScript SDK's priming event: empty data
    b'event: message\nid: 2_abc\ndata: {"jsonrpc":"2.0","id":1,"result":{"content":[]}}\n\n'
)


def test_priming_event_with_empty_data_is_an_event_and_the_answer_follows() -> None:
    events = parse_all(TS_SDK_STREAM)
    assert events == [
        SSEEvent(data="", id="1_abc"),
        SSEEvent(data='{"jsonrpc":"2.0","id":1,"result":{"content":[]}}', id="2_abc"),
    ]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_and_every_chunk_boundary(ending: bytes) -> None:
    stream = TS_SDK_STREAM.replace(b"\n", ending)
    expected = parse_all(TS_SDK_STREAM)
    assert parse_bytewise(stream) == expected
    for split in range(len(stream) + 1):
        assert parse_all(stream, split=split) == expected, split


def test_chunk_boundary_inside_a_utf8_character() -> None:
    stream = "data: grüße, 日本, 🎉\n\n".encode()
    expected = [SSEEvent(data="grüße, 日本, 🎉")]
    for split in range(len(stream) + 1):
        assert parse_all(stream, split=split) == expected
    assert parse_bytewise(stream) == expected


def test_multi_line_data_is_joined_with_line_feeds() -> None:
    assert parse_all(b"data: a\ndata:b\ndata:  c\ndata\n\n") == [SSEEvent(data="a\nb\n c\n")]


def test_comments_and_unknown_fields_are_ignored() -> None:
    stream = b": keep-alive\n\n:another\nfoo: bar\ndata: x\n: mid-event comment\n\n"
    assert parse_all(stream) == [SSEEvent(data="x")]


def test_event_type_id_and_retry() -> None:
    parser = SSEParser()
    events = parser.feed(b"retry: 2500\nevent: ping\nid: 7\ndata: {}\n\ndata: next\n\n")
    assert events == [SSEEvent(data="{}", event="ping", id="7"), SSEEvent(data="next", id="7")]
    assert parser.retry == 2500 and parser.last_event_id == "7"
    parser.feed(b"retry: soon\nid: a\x00b\n\n")  # invalid retry and an id with NUL are ignored
    assert parser.retry == 2500 and parser.last_event_id == "7"


def test_an_event_without_data_is_not_dispatched_but_sets_the_id() -> None:
    parser = SSEParser()
    assert parser.feed(b"id: 42\nevent: x\n\n") == []
    assert parser.last_event_id == "42"
    assert parser.feed(b"data: y\n\n") == [SSEEvent(data="y", id="42")]  # the event type reset


def test_an_unterminated_event_at_the_end_is_dropped() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: complete\n\ndata: half") == [SSEEvent(data="complete")]
    assert parser.end() == []
    parser = SSEParser()
    assert parser.feed(b"data: no blank line\n") == []
    assert parser.end() == []


def test_a_byte_order_mark_is_skipped_once() -> None:
    bom = b"\xef\xbb\xbf"
    assert parse_bytewise(bom + b"data: a\n\n") == [SSEEvent(data="a")]
    assert parse_all(bom + b"data: a\n\n") == [SSEEvent(data="a")]


def test_invalid_utf8_becomes_replacement_characters() -> None:
    assert parse_all(b"data: \xff\xfe\n\n") == [SSEEvent(data="\ufffd\ufffd")]


def test_sse_event_round_trips() -> None:
    body = wire.sse_event(b'{"a":1}', "e1")
    assert parse_all(body) == [SSEEvent(data='{"a":1}', id="e1")]


# --- JSON-RPC ----------------------------------------------------------------------------------
@pytest.mark.parametrize("request_id", [None, True, False, 1.5, 1.0, {"a": 1}, [1]])
def test_request_ids_must_be_strings_or_integers(request_id: object) -> None:
    body = wire.wirejson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/list"})
    with pytest.raises(WireError) as info:
        wire.decode(body)
    assert info.value.code == wire.INVALID_REQUEST


@pytest.mark.parametrize("request_id", [0, -1, 2**70, "", "abc"])
def test_valid_ids(request_id: object) -> None:
    body = wire.wirejson.dumps({"jsonrpc": "2.0", "id": request_id, "method": "ping"})
    assert wire.decode(body) == Request(request_id, "ping", {})  # type: ignore[arg-type]


def test_messages_are_classified() -> None:
    assert wire.decode(b'{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":1}}') == (
        Notification("notifications/cancelled", {"requestId": 1})
    )
    assert wire.decode(b'{"jsonrpc":"2.0","id":"x","result":{}}') == Response("x", result={})
    assert wire.decode(b'{"jsonrpc":"2.0","id":null,"error":{"code":-32000,"message":"m"}}') == Response(
        None, error={"code": -32000, "message": "m"}
    )


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"not json", wire.PARSE_ERROR),
        (b"", wire.PARSE_ERROR),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":NaN}', wire.PARSE_ERROR),
        (b'[{"jsonrpc":"2.0","id":1,"method":"ping"}]', wire.INVALID_REQUEST),
        (b'{"id":1,"method":"ping"}', wire.INVALID_REQUEST),
        (b'{"jsonrpc":"1.0","id":1,"method":"ping"}', wire.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":""}', wire.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":7}', wire.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"method":"x","params":[1]}', wire.INVALID_PARAMS),
        (b'{"jsonrpc":"2.0","id":1}', wire.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"result":{},"error":{"code":1,"message":""}}', wire.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"result":[]}', wire.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1,"error":{"code":"x","message":"m"}}', wire.INVALID_REQUEST),
        (b'{"jsonrpc":"2.0","id":1.5,"result":{}}', wire.INVALID_REQUEST),
    ],
)
def test_broken_messages(body: bytes, code: int) -> None:
    with pytest.raises(WireError) as info:
        wire.decode(body, strict=True)
    assert info.value.code == code


def test_exchange_accepts_only_our_response() -> None:
    exchange = wire.Exchange("j1")
    progress = Notification("notifications/progress", {"progressToken": 1, "progress": 1})
    assert exchange.read(progress) is progress
    assert exchange.read(Response("j1", result={})) == Response("j1", result={})
    with pytest.raises(WireError):
        exchange.read(Response("j2", result={}))
    bad_session = Response(
        None, error={"code": -32000, "message": "Bad Request: No valid session ID provided"}
    )
    assert exchange.read(bad_session) is bad_session
    assert exchange.read_event(SSEEvent(data="")) is None
    assert exchange.read_event(SSEEvent(data='{"jsonrpc":"2.0","id":"j1","result":{}}')) == Response(
        "j1", result={}
    )


def test_session_expiry_is_recognised_from_404_and_from_the_typescript_400() -> None:
    ts_answer = Response(None, error={"code": -32000, "message": "Bad Request: No valid session ID provided"})
    assert wire.session_expired(404, None)
    assert wire.session_expired(400, ts_answer)
    assert not wire.session_expired(400, Response(None, error={"code": -32602, "message": "bad params"}))
    assert not wire.session_expired(200, ts_answer)
    assert not wire.session_expired(500, None)
    assert wire.about_session(b"Session not found") and not wire.about_session("bad params")


def test_bodies() -> None:
    assert wire.result_body(1, {"a": 1}) == b'{"jsonrpc":"2.0","id":1,"result":{"a":1}}'
    assert (
        wire.error_body("x", -32602, "bad")
        == b'{"jsonrpc":"2.0","id":"x","error":{"code":-32602,"message":"bad"}}'
    )
    assert wire.error_body(None, -1, "m", {"d": 1}) == (
        b'{"jsonrpc":"2.0","id":null,"error":{"code":-1,"message":"m","data":{"d":1}}}'
    )
    assert wire.decode(wire.request_body(5, "tools/call", {"name": "a"})) == Request(
        5, "tools/call", {"name": "a"}
    )


# --- headers and the 2026-07-28 envelope -------------------------------------------------------
@pytest.mark.parametrize("value", ["plain", "with space", " lead", "ümlaut", "a\nb", "", "日本"])
def test_header_values_round_trip(value: str) -> None:
    encoded = wire.encode_header(value)
    assert encoded.isascii() and "\n" not in encoded
    assert wire.decode_header(encoded) == value


def test_a_malformed_base64_header_is_kept_as_sent() -> None:
    assert wire.decode_header("=?base64?!!!?=") == "=?base64?!!!?="
    assert wire.decode_header("=?base64?/w==?=") == "=?base64?/w==?="  # not UTF-8


def _modern(method: str = "tools/call", **params: object) -> Request:
    meta = {wire.META_VERSION: "2026-07-28", wire.META_CAPABILITIES: {}}
    return Request(1, method, {"_meta": meta, **params})


def test_modern_envelope_checks() -> None:
    good = _modern(name="a.b")
    assert wire.check_modern_request(good, "2026-07-28", "tools/call", "a.b") is None
    assert (
        wire.check_modern_request(_modern(name="ü"), "2026-07-28", "tools/call", wire.encode_header("ü"))
        is None
    )
    mismatch = [
        wire.check_modern_request(good, "2026-07-28", "tools/list", "a.b"),
        wire.check_modern_request(good, "2026-07-28", "tools/call", None),
        wire.check_modern_request(good, "2026-07-28", "tools/call", "other"),
    ]
    assert all(e is not None and e.code == wire.HEADER_MISMATCH for e in mismatch)
    unknown = wire.check_modern_request(good, "2099-01-01", "tools/call", "a.b")
    assert unknown is not None and unknown.code == wire.UNSUPPORTED_PROTOCOL_VERSION
    no_meta = wire.check_modern_request(Request(1, "tools/list", {}), "2026-07-28", "tools/list", None)
    assert no_meta is not None and no_meta.code == wire.INVALID_PARAMS
    read = _modern("resources/read", uri="file:///x")
    assert wire.check_modern_request(read, "2026-07-28", "resources/read", "file:///x") is None
    assert wire.http_status(wire.HEADER_MISMATCH) == 400
    assert wire.http_status(wire.METHOD_NOT_FOUND) == 404
    assert wire.http_status(-32000) == 200


def test_era_shaping() -> None:
    modern = {
        "content": [],
        "resultType": "complete",
        "ttlMs": 5,
        "_meta": {wire.META_SERVER_INFO: {"name": "u"}},
    }
    assert wire.legacy_result(modern) == {"content": []}
    plain = {"content": [], "_meta": {"x": 1}}
    assert wire.legacy_result(plain) is plain
    shaped = wire.modern_result({"tools": []}, {"name": "mcp-junction"}, listing=True)
    assert shaped == {
        "tools": [],
        "resultType": "complete",
        "ttlMs": 0,
        "cacheScope": "private",
        "_meta": {wire.META_SERVER_INFO: {"name": "mcp-junction"}},
    }


# --- relaying event streams unchanged ----------------------------------------------------------
RELAYED_STREAM = (
    b"\xef\xbb\xbf: keep-alive\n\n"
    b"id: 1\r\nretry: 500\r\ndata: \r\n\r\n"
    b'event: message\rid: 2\rdata: {"a":\r\r'
    b"data: one\ndata: two\n\n"
    b"data: unterminated"
)


def test_sse_blocks_split_a_stream_into_its_events_whatever_the_chunking() -> None:
    expected = [
        b"\xef\xbb\xbf: keep-alive\n\n",
        b"id: 1\r\nretry: 500\r\ndata: \r\n\r\n",
        b'event: message\rid: 2\rdata: {"a":\r\r',
        b"data: one\ndata: two\n\n",
    ]
    for split in range(len(RELAYED_STREAM) + 1):
        blocks = SSEBlocks(1024)
        found = blocks.feed(RELAYED_STREAM[:split]) + blocks.feed(RELAYED_STREAM[split:])
        assert found == expected, split
        assert blocks.end() == b"data: unterminated"
    bytewise = SSEBlocks(1024)
    found = [block for i in range(len(RELAYED_STREAM)) for block in bytewise.feed(RELAYED_STREAM[i : i + 1])]
    assert found == expected
    assert b"".join(found) + bytewise.end() == RELAYED_STREAM  # not one byte changed


def test_sse_blocks_hold_a_final_cr_until_they_know_it_is_not_half_of_crlf() -> None:
    blocks = SSEBlocks(1024)
    assert blocks.feed(b"data: x\r\n\r") == []
    assert blocks.feed(b"\n") == [b"data: x\r\n\r\n"]
    assert blocks.feed(b"data: y\r\r") == []
    assert blocks.feed(b"data: z\n\n") == [b"data: y\r\r", b"data: z\n\n"]


def test_sse_blocks_refuse_an_event_larger_than_the_limit() -> None:
    blocks = SSEBlocks(16)
    assert blocks.feed(b"data: 0123456789\n\n") == [b"data: 0123456789\n\n"]  # whole events pass
    with pytest.raises(WireError):
        blocks.feed(b"data: " + b"x" * 20)


def test_relays_forward_transport_headers_and_never_the_clients_credentials() -> None:
    for name in ("accept", "content-type", "mcp-protocol-version", "last-event-id", "mcp-method"):
        assert wire.relayed_request_header(name)
    assert wire.relayed_request_header("mcp-param-region")
    for name in ("authorization", "cookie", "origin", "host", "mcp-session-id", "x-api-key"):
        assert not wire.relayed_request_header(name)
    assert wire.relayed_response_header("content-type") and wire.relayed_response_header("allow")
    assert not wire.relayed_response_header("set-cookie")
    assert not wire.relayed_response_header("www-authenticate")  # the upstream's auth is ours
    assert not wire.relayed_response_header(wire.SESSION_HEADER)  # mapped, never copied
