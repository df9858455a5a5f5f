"""Every upstream socket connects to the address the SSRF policy checked, never to a fresh lookup.

Fake DNS enters only where `getaddrinfo` would be asked (the `resolver` argument); the servers,
sockets, TLS handshakes and httpx2 clients are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import httpcore2
import httpx2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from proxy.errors import UpstreamRefused, UpstreamUnavailable
from proxy.upstream._pinned import PinnedBackend, SocketOption, open_checked_connection, pinned_transport
from proxy.upstream.ssrf import resolve_checked

pytestmark = pytest.mark.anyio


class FakeDNS:
    """Answers each lookup with the next round of addresses (the last round repeats)."""

    def __init__(self, *rounds: list[str]):
        self.rounds = list(rounds)
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return self.rounds.pop(0) if len(self.rounds) > 1 else self.rounds[0]


class RecordingBackend(httpcore2.AsyncNetworkBackend):
    """AnyIO's sockets, noting which host each connect was given."""

    def __init__(self) -> None:
        self.hosts: list[str] = []
        self._real = httpcore2.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 - httpcore2's signature
        local_address: str | None = None,
        socket_options: Iterable[SocketOption] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        self.hosts.append(host)
        return await self._real.connect_tcp(
            host, port, timeout=timeout, local_address=local_address, socket_options=socket_options
        )


@dataclass
class Server:
    port: int = 0
    connections: int = 0
    hosts: list[str] = field(default_factory=list)
    server_names: list[str | None] = field(default_factory=list)


@contextlib.asynccontextmanager
async def http_server(tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    """An HTTP/1.1 server on 127.0.0.1 answering `ok` and closing; it notes Host headers and SNI."""
    server = Server()
    if tls is not None:
        tls.sni_callback = lambda _obj, name, _ctx: server.server_names.append(name)

    open_writers: set[asyncio.StreamWriter] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server.connections += 1
        open_writers.add(writer)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            for line in head.decode("latin-1").split("\r\n")[1:]:
                name, _, value = line.partition(":")
                if name.lower() == "host":
                    server.hosts.append(value.strip())
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up first
        finally:
            writer.close()

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        async with listener:
            yield server
    finally:
        for writer in open_writers:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()


def _client(allow_private: bool, dns: FakeDNS | None = None, **kw: object) -> httpx2.AsyncClient:
    transport = pinned_transport(allow_private, verify=ssl.create_default_context(), resolver=dns)
    return httpx2.AsyncClient(transport=transport, timeout=5, **kw)  # type: ignore[arg-type]


# resolve_checked


async def test_ip_literals_skip_dns_and_are_checked() -> None:
    never = FakeDNS([])
    assert await resolve_checked("127.0.0.1", 80, True, resolver=never) == ["127.0.0.1"]
    assert await resolve_checked("[::1]", 80, True, resolver=never) == ["::1"]
    assert await resolve_checked("8.8.8.8", 443, False, resolver=never) == ["8.8.8.8"]
    with pytest.raises(UpstreamRefused, match="JUNCTION_ALLOW_PRIVATE_UPSTREAMS"):
        await resolve_checked("127.0.0.1", 80, False, resolver=never)
    with pytest.raises(UpstreamRefused, match="metadata"):
        await resolve_checked("169.254.169.254", 80, True, resolver=never)
    assert never.asked == []


async def test_localhost_resolves_to_loopback_addresses_refused_unless_private_is_allowed() -> None:
    addresses = await resolve_checked("localhost", 80, True)
    assert addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses)
    with pytest.raises(UpstreamRefused, match="'localhost' resolves to"):
        await resolve_checked("localhost", 80, False)


async def test_addresses_come_back_deduplicated_in_resolution_order() -> None:
    dns = FakeDNS(["8.8.4.4", "8.8.8.8", "8.8.4.4"])
    assert await resolve_checked("dns.example", 443, False, resolver=dns) == ["8.8.4.4", "8.8.8.8"]


async def test_one_forbidden_address_refuses_the_host() -> None:
    dns = FakeDNS(["8.8.8.8", "169.254.169.254"])
    with pytest.raises(UpstreamRefused, match="169.254.169.254"):
        await resolve_checked("mixed.example", 80, True, resolver=dns)


async def test_a_name_that_does_not_resolve_is_unavailable() -> None:
    async def fails(host: str, port: int) -> list[str]:
        raise OSError("Name or service not known")

    with pytest.raises(UpstreamUnavailable, match="cannot resolve"):
        await resolve_checked("nowhere.example", 80, True, resolver=fails)
    with pytest.raises(UpstreamUnavailable):
        await resolve_checked("empty.example", 80, True, resolver=FakeDNS([]))


# the httpx2 transport (the SDK's sockets)


async def test_pinned_client_refuses_loopback_before_any_socket_connects() -> None:
    async with http_server() as server, _client(allow_private=False) as client:
        with pytest.raises(UpstreamRefused):
            await client.get(f"http://127.0.0.1:{server.port}/")
    assert server.connections == 0


async def test_pinned_client_reaches_a_local_server_when_private_is_allowed() -> None:
    async with http_server() as server, _client(allow_private=True) as client:
        response = await client.get(f"http://127.0.0.1:{server.port}/")
    assert (response.status_code, response.text) == (200, "ok")
    assert server.hosts == [f"127.0.0.1:{server.port}"]


async def test_dns_rebinding_cannot_move_a_connection_to_the_metadata_address() -> None:
    """The first lookup says loopback (allowed), every later one the metadata service."""
    dns = FakeDNS(["127.0.0.1"], ["169.254.169.254"])
    async with http_server() as server, _client(allow_private=True, dns=dns) as client:
        url = f"http://rebind.example:{server.port}/"
        first = await client.get(url)
        # The server closed that connection, so this request needs a new socket and a new lookup.
        with pytest.raises(UpstreamRefused, match="169.254.169.254"):
            await client.get(url)
    assert first.text == "ok"
    assert server.hosts == [f"rebind.example:{server.port}"]  # the Host header keeps the name
    assert dns.asked == ["rebind.example", "rebind.example"]  # one lookup per socket
    assert server.connections == 1


async def test_the_socket_is_opened_to_the_checked_address_never_to_the_name() -> None:
    dns = FakeDNS(["127.0.0.1"], ["169.254.169.254"])
    sockets = RecordingBackend()
    backend = PinnedBackend(True, resolver=dns, inner=sockets)
    async with http_server() as server:
        stream = await backend.connect_tcp("rebind.example", server.port, timeout=5)
        assert stream.get_extra_info("server_addr") == ("127.0.0.1", server.port)
        await stream.aclose()
        with pytest.raises(UpstreamRefused):
            await backend.connect_tcp("rebind.example", server.port, timeout=5)
    assert sockets.hosts == ["127.0.0.1"]


async def test_the_next_checked_address_is_tried_when_the_first_refuses() -> None:
    # Nothing listens on 127.0.0.2 at that port, so the kernel refuses it at once.
    dns = FakeDNS(["127.0.0.2", "127.0.0.1"])
    async with http_server() as server, _client(allow_private=True, dns=dns) as client:
        response = await client.get(f"http://two.example:{server.port}/")
    assert response.text == "ok"


async def test_a_lookup_that_never_answers_is_a_connect_timeout() -> None:
    async def hangs(host: str, port: int) -> list[str]:
        await anyio.sleep_forever()
        raise AssertionError

    transport = pinned_transport(True, verify=ssl.create_default_context(), resolver=hangs)
    async with httpx2.AsyncClient(transport=transport, timeout=0.2) as client:
        with pytest.raises(httpx2.ConnectTimeout):
            await client.get("http://slow.example/")


async def test_environment_proxies_are_not_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy would look the name up itself, out of the policy's reach."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
        monkeypatch.setenv(name, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    async with http_server() as server, _client(allow_private=True) as client:
        assert (await client.get(f"http://127.0.0.1:{server.port}/")).text == "ok"


def test_httpx2_still_keeps_its_connection_pool_in_the_attribute_we_replace() -> None:
    """Contract with httpx2's private `_pool`: if this fails, pinned_transport() must change."""
    plain = httpx2.AsyncHTTPTransport()
    assert isinstance(vars(plain).get("_pool"), httpcore2.AsyncConnectionPool)
    pinned = pinned_transport(False, verify=ssl.create_default_context())
    assert isinstance(pinned._pool, httpcore2.AsyncConnectionPool)
    assert isinstance(pinned._pool._network_backend, PinnedBackend)


# TLS: the socket goes to an address, the handshake still names the host


def _self_signed(tmp_path: Path, name: str) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
def localhost_tls(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server context, client context trusting it) for a certificate naming only `localhost`."""
    cert_path, key_path = _self_signed(tmp_path, "localhost")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_path, key_path)
    return server, ssl.create_default_context(cafile=str(cert_path))


async def test_tls_verifies_and_sends_the_host_name_not_the_pinned_address(
    localhost_tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_tls, client_tls = localhost_tls
    transport = pinned_transport(True, verify=client_tls)
    async with (
        http_server(server_tls) as server,
        httpx2.AsyncClient(transport=transport, timeout=5) as client,
    ):
        response = await client.get(f"https://localhost:{server.port}/")
        assert response.text == "ok"
        assert server.server_names == ["localhost"]
        assert server.hosts == [f"localhost:{server.port}"]
        # The same server by address: the certificate names no address, so verification fails.
        with pytest.raises(httpx2.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(f"https://127.0.0.1:{server.port}/")


# the fast lane's asyncio sockets


async def test_open_checked_connection_connects_to_the_checked_address_and_refuses_a_rebind() -> None:
    dns = FakeDNS(["127.0.0.1"], ["169.254.169.254"])
    async with http_server() as server:
        transport, _ = await open_checked_connection(
            asyncio.Protocol, "rebind.example", server.port, allow_private=True, resolver=dns
        )
        assert transport.get_extra_info("peername") == ("127.0.0.1", server.port)
        transport.close()
        with pytest.raises(UpstreamRefused, match="169.254.169.254"):
            await open_checked_connection(
                asyncio.Protocol, "rebind.example", server.port, allow_private=True, resolver=dns
            )
    assert dns.asked == ["rebind.example", "rebind.example"]


async def test_open_checked_connection_refuses_loopback_unless_allowed_and_tries_the_next_address() -> None:
    async with http_server() as server:
        with pytest.raises(UpstreamRefused):
            await open_checked_connection(asyncio.Protocol, "127.0.0.1", server.port, allow_private=False)
        dns = FakeDNS(["127.0.0.2", "127.0.0.1"])
        transport, _ = await open_checked_connection(
            asyncio.Protocol, "two.example", server.port, allow_private=True, resolver=dns
        )
        assert transport.get_extra_info("peername") == ("127.0.0.1", server.port)
        transport.close()
        with pytest.raises(OSError, match="cannot resolve"):
            await open_checked_connection(
                asyncio.Protocol, "none.example", server.port, allow_private=True, resolver=FakeDNS([])
            )


async def test_open_checked_connection_verifies_tls_against_the_host_name(
    localhost_tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_tls, client_tls = localhost_tls
    async with http_server(server_tls) as server:
        transport, _ = await open_checked_connection(
            asyncio.Protocol, "localhost", server.port, allow_private=True, tls=client_tls
        )
        assert transport.get_extra_info("ssl_object").server_hostname == "localhost"
        transport.close()
        dns = FakeDNS(["127.0.0.1"])
        with pytest.raises(ssl.SSLCertVerificationError):
            await open_checked_connection(
                asyncio.Protocol,
                "elsewhere.example",
                server.port,
                allow_private=True,
                tls=client_tls,
                resolver=dns,
            )
