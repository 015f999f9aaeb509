"""TLS: sinks and ingests served over TLS, server.endpoint, and an https source that verifies certificates."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, wrapClientTLS
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.logger import formatEvent, globalLogPublisher

from sse_daemon.config.errors import ConfigError
from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.events.schema import Event

from .conftest import RawHttpClient, deadline, subscribe, wait_for


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA, a server certificate for localhost/127.0.0.1 signed by it, and a stranger's key."""
    folder = tmp_path_factory.mktemp("pki")
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(_name("test CA")).issuer_name(_name("test CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(ca_key, hashes.SHA256()))
    elsewhere = (x509.CertificateBuilder().subject_name(_name("other.example")).issuer_name(ca.subject)
                 .public_key(key.public_key()).serial_number(x509.random_serial_number())
                 .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
                 .add_extension(x509.SubjectAlternativeName([x509.DNSName("other.example")]), critical=False)
                 .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                 .sign(ca_key, hashes.SHA256()))
    files = {
        "ca": folder / "ca.pem", "cert": folder / "cert.pem", "key": folder / "key.pem",
        "other_key": folder / "other-key.pem", "empty": folder / "empty.pem", "elsewhere": folder / "elsewhere.pem",
    }
    files["elsewhere"].write_bytes(elsewhere.public_bytes(serialization.Encoding.PEM))
    files["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(_pem_key(key))
    files["other_key"].write_bytes(_pem_key(ec.generate_private_key(ec.SECP256R1())))
    files["empty"].write_text("no certificates here\n")
    return files


def tls_sink(pki: dict[str, Path], extra: str = "") -> str:
    return f"""\
sinks:
  Events:
    type: sse-server
    schema: "n int"
    server.host: 127.0.0.1
    server.port: 0
    server.path: events
    server.tls.cert: {pki['cert']}
    server.tls.key: {pki['key']}
sources:
  In:
    type: http
    stream: Events
    receiver.url: https://127.0.0.1:0/in
    server.tls.cert: {pki['cert']}
    server.tls.key: {pki['key']}
{extra}"""


async def tls_subscribe(port: int, ca: Path) -> RawHttpClient:
    client = RawHttpClient()
    options = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(ca.read_bytes()))
    await deadline(connectProtocol(wrapClientTLS(options, TCP4ClientEndpoint(reactor, "127.0.0.1", port)), client))
    client.transport.write(b"GET /events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n")
    await client.wait_for(b"stream open\n\n")
    return client


@pytest.fixture
def log_text():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield lambda: "\n".join(formatEvent(e) or "" for e in events)
    globalLogPublisher.removeObserver(events.append)


@pytest_twisted.ensureDeferred
async def test_sink_and_ingest_over_tls(daemon, pki) -> None:
    import httpx

    service = await daemon(tls_sink(pki))
    port = service.port_of("Events")
    client = await tls_subscribe(port, pki["ca"])

    def post() -> int:
        with httpx.Client(verify=ssl.create_default_context(cafile=str(pki["ca"])), timeout=30) as http:
            return http.post(f"https://localhost:{port}/in", json={"n": 7}).status_code

    assert await deadline(threads.deferToThread(post)) == 200
    await client.wait_for(b'"n":7')
    await client.close()
    with pytest.raises(Exception):  # plain HTTP on the TLS port gets no answer it can read
        plain = await subscribe(port)
        await plain.close()


def relay_config(port: int, ca_file: str | None = None) -> str:
    """An sse source reading the TLS sink on ``port`` by its host name, trusting ``ca_file`` (None: the system's)."""
    ca = f"\n    tls.ca.file: {ca_file}" if ca_file else ""
    return f"""\
sources:
  Src:
    type: sse
    stream: Copy
    schema: "n int"
    receiver.url: https://localhost:{port}/events{ca}
sinks:
  Show: {{type: log, stream: Copy}}
"""


@pytest_twisted.ensureDeferred
async def test_https_source_verifies_against_the_ca_file(daemon, pki) -> None:
    upstream = await daemon(tls_sink(pki))
    port = upstream.port_of("Events")
    relay = await daemon(relay_config(port, pki['ca']))
    got: list[Event] = []
    relay.bus.subscribe("Copy", got.extend)
    sink = upstream.sinks["Events"].sink
    await wait_for(lambda: sink.subscribers, what="the source to subscribe over TLS")
    upstream.bus.publish("Events", [Event({"n": 5})])
    await wait_for(lambda: got, what="the event through TLS")
    assert got[0].values == {"n": 5}


@pytest_twisted.ensureDeferred
async def test_https_source_refuses_an_unknown_ca_by_default(daemon, pki, log_text) -> None:
    upstream = await daemon(tls_sink(pki))
    port = upstream.port_of("Events")
    relay = await daemon(relay_config(port))
    source = relay.sources["Src"]
    await wait_for(lambda: source.counters["failures"] >= 1, what="the TLS failure")
    assert not upstream.sinks["Events"].sink.subscribers, "no stream over an unverified connection"
    assert "TLS error" in log_text()


@pytest_twisted.ensureDeferred
async def test_https_source_with_a_ca_file_checks_the_host_name(daemon, pki, log_text) -> None:
    """A certificate that chains to tls.ca.file but names another host is refused, and logged as a TLS error."""
    upstream = await daemon(tls_sink({"cert": pki["elsewhere"], "key": pki["key"]}))
    port = upstream.port_of("Events")
    relay = await daemon(relay_config(port, pki['ca']), name="relay.yaml")
    source = relay.sources["Src"]
    await wait_for(lambda: source.counters["failures"] >= 1, what="the TLS failure")
    assert not upstream.sinks["Events"].sink.subscribers, "no stream to a host the certificate does not name"
    assert "TLS error: the certificate is not for localhost" in log_text()


@pytest_twisted.ensureDeferred
async def test_server_endpoint_string(daemon) -> None:
    service = await daemon("""\
sinks:
  Events:
    type: sse-server
    schema: "n int"
    server.host: 127.0.0.1
    server.port: 0
    server.path: events
    server.endpoint: "tcp:0:interface=127.0.0.1:backlog=10"
""")
    client = await subscribe(service.port_of("Events"))
    await client.close()


@pytest.mark.reactor_free
@pytest.mark.parametrize(("options", "message"), [
    ("server.tls.cert: {cert}", "option 'server.tls.key': server.tls.cert and server.tls.key go together"),
    ("server.tls.cert: {cert}\n    server.tls.key: {other_key}", "option 'server.tls.key': {other_key} is not the private key of the certificate in {cert}"),
    ("server.tls.cert: {key}\n    server.tls.key: {key}", "option 'server.tls.cert': {key} does not hold a PEM certificate"),
    ("server.tls.cert: {cert}\n    server.tls.key: /nonexistent/key.pem", "option 'server.tls.key': cannot read /nonexistent/key.pem"),
    ("server.tls.cert: {cert}\n    server.tls.key: {key}\n    server.endpoint: tcp:1", "option 'server.endpoint': give server.endpoint or server.tls.cert/server.tls.key, not both"),
])
def test_sink_tls_config_errors(pki, options: str, message: str) -> None:
    names = {k: str(v) for k, v in pki.items()}
    text = f"sinks:\n  S:\n    type: sse-server\n    schema: 'a string'\n    server.port: 0\n    {options.format(**names)}\n"
    with pytest.raises(ConfigError) as e:
        validate(load_yaml(text))
    assert message.format(**names) in str(e.value)


@pytest.mark.reactor_free
def test_other_tls_config_errors(pki) -> None:
    text = f"""\
sources:
  Ingest: {{type: http, stream: S, schema: 'a string', receiver.url: "https://127.0.0.1:9/in"}}
  Plain: {{type: http, stream: S, receiver.url: "http://127.0.0.1:10/in", server.tls.cert: {pki['cert']}, server.tls.key: {pki['key']}}}
  Src: {{type: sse, stream: S, receiver.url: "https://example.com/", tls.ca.file: {pki['empty']}}}
sinks:
  Tls: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 11, server.tls.cert: {pki['cert']}, server.tls.key: {pki['key']}}}
  NotTls: {{type: sse-server, stream: S, server.host: 127.0.0.1, server.port: 11, server.path: other}}
"""
    with pytest.raises(ConfigError) as e:
        validate(load_yaml(text, "c.yaml"))
    messages = str(e.value)
    assert "source 'Ingest': option 'receiver.url': an https receiver.url needs server.tls.cert" in messages
    assert "source 'Plain': option 'receiver.url': this port is served over TLS: write receiver.url with https://" in messages
    assert f"source 'Src': option 'tls.ca.file': {pki['empty']} holds no PEM certificate" in messages
    assert "sink 'NotTls': option 'server.tls.cert': port 11 is already bound differently by sink 'Tls'" in messages


@pytest_twisted.ensureDeferred
async def test_reload_rebinds_a_port_with_tls(daemon, pki, tmp_path: Path) -> None:
    import socket

    from sse_daemon.daemon.reload import Reloader

    from .conftest import write_config

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    plain = f"sinks:\n  Events: {{type: sse-server, schema: 'n int', server.host: 127.0.0.1, server.port: {port}, server.path: events}}\n"
    service = await daemon(plain)
    client = await subscribe(port)
    write_config(tmp_path, plain.replace("server.path: events", f"server.path: events, server.tls.cert: {pki['cert']}, server.tls.key: {pki['key']}"))
    assert await deadline(Reloader(service, [str(tmp_path / "sse.yaml")]).reload()) is True
    await wait_for(lambda: client.is_closed, what="the plain stream to close")
    secure = await tls_subscribe(port, pki["ca"])
    service.bus.publish("Events", [Event({"n": 8})])
    await secure.wait_for(b'"n":8')
    await secure.close()


@pytest_twisted.ensureDeferred
async def test_a_stream_ended_on_a_tls_port_closes_its_connection(daemon, pki) -> None:
    """The TLS transport closes only once its producer (the HTTP channel) lets go: a stream ended by the drain
    (or an expiry, a revocation, a reload) stayed open, and the drain waited out its flush timeout for it."""
    service = await daemon(tls_sink(pki))
    client = await tls_subscribe(service.port_of("Events"), pki["ca"])
    (subscriber,) = service.sinks["Events"].sink.subscribers
    tcp = subscriber.request.transport.transport  # beneath TLS
    closed: list[bool] = []
    stopping = service.stopService()
    stopping.addCallback(lambda _: closed.append(bool(tcp.disconnected)))
    await deadline(stopping)
    assert closed == [True], "the drain was done with the connection still open"
    await deadline(client.closed)
    assert client.received.endswith(b"0\r\n\r\n") and b": server shutting down; reconnect\n" in client.received


def _served_certificate(port: int) -> bytes:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(raw, server_hostname="localhost") as tls:
        certificate = tls.getpeercert(binary_form=True)
    assert certificate is not None
    return certificate


@pytest.mark.parametrize("how", ["server.tls", "server.endpoint"])
@pytest_twisted.ensureDeferred
async def test_reload_serves_a_renewed_certificate(daemon, pki, tmp_path: Path, how: str) -> None:
    """certbot renews the files in place (same paths): a reload serves the new certificate, not the one read at bind."""
    from sse_daemon.daemon.reload import Reloader

    live = tmp_path / "live"
    live.mkdir()
    files = {"cert": live / "cert.pem", "key": live / "key.pem"}
    files["cert"].write_bytes(pki["cert"].read_bytes())
    files["key"].write_bytes(pki["key"].read_bytes())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    binding = (f"server.tls.cert: {files['cert']}, server.tls.key: {files['key']}" if how == "server.tls" else
               f"server.endpoint: 'ssl:{port}:interface=127.0.0.1:certKey={files['cert']}:privateKey={files['key']}'")
    service = await daemon(f"sinks:\n  Events: {{type: sse-server, schema: 'n int', server.host: 127.0.0.1, server.port: {port}, "
                           f"server.path: events, {binding}}}\n")
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])  # as at start-up: before the files change
    first = await threads.deferToThread(_served_certificate, port)

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    renewed = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(_name("localhost"))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=90))
               .sign(key, hashes.SHA256()))
    files["cert"].write_bytes(renewed.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(_pem_key(key))
    assert await deadline(reloader.reload()) is True

    served = await threads.deferToThread(_served_certificate, port)
    assert served != first, "the port still serves the certificate it read when it was bound"
    assert served == renewed.public_bytes(serialization.Encoding.DER)


@pytest_twisted.ensureDeferred
async def test_a_rebind_to_unusable_tls_files_is_rejected_before_the_port_is_released(daemon, pki, tmp_path: Path) -> None:
    """An ssl: server.endpoint's files are read only by Twisted: a renewal caught half-written (a key that is not the
    certificate's) must reject the reload, not release the port and then fail to bind it again."""
    from sse_daemon.daemon.reload import Reloader

    live = tmp_path / "live"
    live.mkdir()
    cert, key = live / "cert.pem", live / "key.pem"
    cert.write_bytes(pki["cert"].read_bytes())
    key.write_bytes(pki["key"].read_bytes())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    service = await daemon(f"sinks:\n  Events: {{type: sse-server, schema: 'n int', server.host: 127.0.0.1, server.port: {port}, "
                           f"server.path: events, server.endpoint: 'ssl:{port}:interface=127.0.0.1:certKey={cert}:privateKey={key}'}}\n")
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    first = await threads.deferToThread(_served_certificate, port)
    key.write_bytes(pki["other_key"].read_bytes())
    assert await deadline(reloader.reload()) is False
    assert await threads.deferToThread(_served_certificate, port) == first, "the port is still served as it was"
