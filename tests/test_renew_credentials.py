"""A reload that changes only a sink's or an ingest's users, tokens or JWT key renews them in place (daemon/plan.py,
Guard.renew): nothing restarts, the streams the fresh credentials still let in go on, the others are ended."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import bcrypt
import pytest
import pytest_twisted
from argon2 import PasswordHasher
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
from twisted.web.test.requesthelper import DummyRequest

from sse_daemon.config.validate import validate
from sse_daemon.config.yamlfile import load_yaml
from sse_daemon.daemon.reload import Reloader
from sse_daemon.edge.auth import Allowed, BasicAuth, Credentials, PasswordCheck
from sse_daemon.edge.guard import Guard, Passage
from sse_daemon.ops.figures import sink_figures

from .conftest import deadline, raw_request, status, subscribe, wait_for
from .test_auth import ARGON_PASSWORD, PASSWORD, STATIC_TOKEN, basic, config, get, post

REVOKED = b": credentials no longer valid; reconnect with valid ones\n"


def bcrypt_hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()


def fresh_events(client) -> int:
    return bytes(client.received).count(b'"n":')


@pytest_twisted.ensureDeferred
async def test_changed_users_end_only_their_own_streams_and_nothing_restarts(daemon, tmp_path: Path, log_events) -> None:
    users = tmp_path / "users"
    bob = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash(ARGON_PASSWORD)
    users.write_text(f"alice:{bcrypt_hash(PASSWORD)}\nbob:{bob}\n")
    service = await daemon(config(**{"auth.type": "basic", "auth.users.file": users}))
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    port, sink, ingest = service.port_of("Events"), service.sinks["Events"].sink, service.sources["In"]
    alice_stream = await subscribe(port, headers=f"Authorization: {basic('alice', PASSWORD)}\r\n")
    bob_stream = await subscribe(port, headers=f"Authorization: {basic('bob', ARGON_PASSWORD)}\r\n")

    users.write_text(f"alice:{bcrypt_hash('a new password for alice')}\nbob:{bob}\ncarol:{bcrypt_hash('carols own')}\n")
    assert await deadline(reloader.reload()) is True
    await wait_for(lambda: alice_stream.is_closed, what="the stream of the user whose password changed to end")
    assert REVOKED in alice_stream.received and alice_stream.received.endswith(b"0\r\n\r\n")
    assert service.sinks["Events"].sink is sink and service.sources["In"] is ingest, "kept, not restarted"
    assert status(await post(port)) == 200
    await wait_for(lambda: fresh_events(bob_stream) == 1, what="the untouched user's stream to go on")
    assert not bob_stream.is_closed
    assert status(await get(port, headers=f"Authorization: {basic('alice', PASSWORD)}\r\n")) == 401
    for user, password in (("alice", "a new password for alice"), ("carol", "carols own")):
        await (await subscribe(port, headers=f"Authorization: {basic(user, password)}\r\n")).close()
    assert sink.counters["closed_credentials_revoked"] == 1
    assert sink.counters["connections_opened"] == 4
    assert sink_figures(service.sinks["Events"])["ended"] == {"token-expired": 0, "credentials-revoked": 1}  # /metrics
    said = [e.get("log_format") or "" for e in log_events]
    assert any("takes fresh credentials" in s for s in said)
    assert any("the credentials they came with are no longer valid" in s for s in said)
    await bob_stream.close()


@pytest_twisted.ensureDeferred
async def test_a_removed_token_and_a_rotated_jwt_key_end_their_streams(daemon, tmp_path: Path) -> None:
    import jwt

    tokens, key = tmp_path / "tokens", tmp_path / "jwt-key"
    kept_token = "another-static-token-0123456789"
    tokens.write_text(f"{STATIC_TOKEN}\n{kept_token}\n")
    key.write_text("an-hmac-secret-of-thirty-two-bytes!!\n")
    service = await daemon(config(**{"auth.type": "bearer", "auth.tokens.file": tokens, "auth.jwt.key.file": key,
                                     "auth.jwt.algorithms": "HS256", "auth.jwt.audience": "sse"}))
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    port, sink = service.port_of("Events"), service.sinks["Events"].sink
    signed = jwt.encode({"aud": "sse", "exp": 4_000_000_000, "streams": "*"}, "an-hmac-secret-of-thirty-two-bytes!!", algorithm="HS256")
    removed = await subscribe(port, headers=f"Authorization: Bearer {STATIC_TOKEN}\r\n")
    kept = await subscribe(port, headers=f"Authorization: Bearer {kept_token}\r\n")
    by_jwt = await subscribe(port, headers=f"Authorization: Bearer {signed}\r\n")

    tokens.write_text(f"{kept_token}\n")
    assert await deadline(reloader.reload()) is True
    await wait_for(lambda: removed.is_closed, what="the removed token's stream to end")
    assert REVOKED in removed.received and not kept.is_closed and not by_jwt.is_closed
    key.write_text("a-rotated-hmac-secret-of-32-bytes!!!\n")
    assert await deadline(reloader.reload()) is True
    await wait_for(lambda: by_jwt.is_closed, what="the stream of a token signed with the old key to end")
    assert status(await post(port)) == 200
    await wait_for(lambda: fresh_events(kept) == 1, what="the kept token's stream to go on")
    assert status(await get(port, headers=f"Authorization: Bearer {STATIC_TOKEN}\r\n")) == 401
    assert sink.counters["closed_credentials_revoked"] == 2
    await kept.close()


@pytest_twisted.ensureDeferred
async def test_an_ingests_tokens_are_renewed_and_an_unreadable_file_keeps_them(daemon, tmp_path: Path, log_events) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{STATIC_TOKEN}\n")
    service = await daemon(config(ingest={"auth.type": "bearer", "auth.tokens.file": tokens}))
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    port, ingest = service.port_of("In"), service.sources["In"]
    rotated = "a-rotated-static-token-0123456789"
    tokens.write_text(f"{rotated}\n")
    assert await deadline(reloader.reload()) is True
    assert service.sources["In"] is ingest
    assert status(await post(port, headers=f"Authorization: Bearer {STATIC_TOKEN}\r\n")) == 401
    assert status(await post(port, headers=f"Authorization: Bearer {rotated}\r\n")) == 200
    tokens.write_text("short\n")  # as when the file turns bad between the reload's check and its read
    service.renew_credentials(service.config, ["In"])
    assert status(await post(port, headers=f"Authorization: Bearer {rotated}\r\n")) == 200, "the running tokens stay"
    kept = [e for e in log_events if "kept the credentials it had" in (e.get("log_format") or "")]
    assert len(kept) == 1


def test_a_password_verified_against_an_entry_renewed_meanwhile_is_refused() -> None:
    """The hash runs on a thread; if fresh credentials arrive meanwhile, the entry it was checked against must
    still be the user's, or the request is refused as a wrong password (no stream from a revoked password)."""
    old_hash, new_hash = bcrypt_hash("old"), bcrypt_hash("new")
    connector = next(c for c in validate(load_yaml(config())).sinks if c.name == "Events")
    guard = Guard(Resource(), connector, Clock(), Counter(), authenticator=BasicAuth({"alice": new_hash}, "r"),
                  open_streams=list, on_revoked=lambda requests: None)  # a sink's guard
    opened: list[object] = []
    passage = Passage(lambda request: opened.append(request) or NOT_DONE_YET)  # a stream: it stays open
    refused = DummyRequest([b"events"])
    guard._decided(Allowed("alice"), refused, "127.0.0.1", [], passage, PasswordCheck("alice", "old", old_hash, b"k"))
    assert refused.responseCode == 401 and not opened and guard.rejected == {"bad-credentials": 1}
    admitted = DummyRequest([b"events"])
    admitted.requestHeaders.setRawHeaders(b"authorization", [basic("alice", "new").encode()])
    guard._decided(Allowed("alice"), admitted, "127.0.0.1", [], passage, PasswordCheck("alice", "new", new_hash, b"k"))
    assert opened == [admitted] and guard.still_allowed(admitted, 0.0)
    guard.renew(BasicAuth({"alice": old_hash}, "r"), None)
    assert not guard.still_allowed(admitted, 0.0), "a stream verified against an entry that changed"


def test_open_streams_are_checked_again_a_slice_a_turn_and_a_newer_renewal_takes_over() -> None:
    """Thousands of streams are not checked in one reactor turn (a JWT's signature each): RECHECK_SLICE a turn; the
    streams to end are handed over once, at the end; a renewal during a pass replaces it (it checks them all)."""
    from sse_daemon.config.credentials import token_digest
    from sse_daemon.edge.auth import BearerAuth
    from sse_daemon.edge.guard import RECHECK_SLICE

    streams = []
    for number in range(2 * RECHECK_SLICE + 50):
        request = DummyRequest([b"events"])
        request.requestHeaders.setRawHeaders(b"authorization", [f"Bearer token-number-{number % 2}-of-enough-length".encode()])
        streams.append(request)
    both = [token_digest(f"token-number-{n}-of-enough-length") for n in (0, 1)]
    ended: list[list[object]] = []
    clock = Clock()
    connector = next(c for c in validate(load_yaml(config())).sinks if c.name == "Events")
    guard = Guard(Resource(), connector, clock, Counter(), authenticator=BearerAuth(both, None, "r"),
                  open_streams=lambda: streams, on_revoked=ended.append)
    guard.renew(BearerAuth(both[:1], None, "r"), None)  # token 1 revoked
    assert ended == [] and len(clock.getDelayedCalls()) == 1, "one slice now, the rest on later turns"
    guard.renew(BearerAuth(both[1:], None, "r"), None)  # then token 0 instead: the first pass gives way
    for _ in range(3):
        clock.advance(0)
    assert len(ended) == 1 and ended[0] == streams[0::2], "the newest credentials decide, once"
    assert not clock.getDelayedCalls()


HUB = """\
sources:
  In: {type: http, stream: Open, schema: "n int", receiver.url: "http://127.0.0.1:0/in"}
sinks:
  Open: {type: sse-server, stream: Open, schema: "n int", server.host: 127.0.0.1, server.port: 0, server.path: open, hub.path: /hub}
  Guarded: {type: sse-server, stream: Guarded, schema: "n int", server.host: 127.0.0.1, server.port: 0, server.path: guarded,
            hub.path: /hub, auth.type: bearer, auth.tokens.file: TOKENS}
"""


@pytest_twisted.ensureDeferred
async def test_a_hub_connection_whose_token_is_removed_ends_whole_and_the_others_go_on(daemon, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    kept_token = "another-static-token-0123456789"
    tokens.write_text(f"{STATIC_TOKEN}\n{kept_token}\n")
    service = await daemon(HUB.replace("TOKENS", str(tokens)))
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    port = service.port_of("Open")
    removed = await subscribe(port, "/hub?stream=Open&stream=Guarded", f"Authorization: Bearer {STATIC_TOKEN}\r\n")
    kept = await subscribe(port, "/hub?stream=Open&stream=Guarded", f"Authorization: Bearer {kept_token}\r\n")
    own = await subscribe(port, "/guarded", f"Authorization: Bearer {kept_token}\r\n")
    tokens.write_text(f"{kept_token}\n")
    assert await deadline(reloader.reload()) is True
    await wait_for(lambda: removed.is_closed, what="the hub connection of the removed token to end")
    assert REVOKED in removed.received
    assert status(await post(port, data=b'{"n": 7}')) == 200
    await wait_for(lambda: b'"n":7' in kept.received, what="the other hub connection to go on")
    assert not own.is_closed
    assert service.sinks["Guarded"].sink.counters["closed_credentials_revoked"] == 1
    assert service.sinks["Open"].sink.counters["closed_credentials_revoked"] == 0
    for name in ("Guarded", "Open"):  # sse_daemon_sink_connections_closed: the hub connection the daemon ended too
        assert service.sinks[name].sink.counters["connections_closed"] == 1, name
    await kept.close()
    await own.close()


@pytest_twisted.ensureDeferred
async def test_a_streaming_publish_whose_token_is_removed_is_cut_short_and_says_why(daemon, tmp_path: Path) -> None:
    from .test_streaming_publish import HEAD, INGEST, chunk, numbers

    tokens = tmp_path / "tokens"
    kept_token = "another-static-token-0123456789"
    tokens.write_text(f"{STATIC_TOKEN}\n{kept_token}\n")
    service = await daemon(INGEST.format(extra=f", auth.type: bearer, auth.tokens.file: {tokens}", sink_extra=""))
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    port, ingest = service.port_of("In"), service.sources["In"]
    live = await subscribe(service.port_of("Out"), "/events")

    def streaming(token: str, first: int):
        head = HEAD.replace(b"\r\n\r\n", f"\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        return raw_request(port, head + chunk(b'{"n": %d}\n' % first))

    revoked, kept = await streaming(STATIC_TOKEN, 1), await streaming(kept_token, 2)
    await wait_for(lambda: sorted(numbers(bytes(live.received))) == [1, 2], what="a line of each stream delivered")
    tokens.write_text(f"{kept_token}\n")
    assert await deadline(reloader.reload()) is True
    await wait_for(lambda: revoked.is_closed, what="the revoked stream's answer")
    answer = json.loads(bytes(revoked.received).partition(b"\r\n\r\n")[2])
    assert (answer["accepted"], answer["ended"]) == (1, "credentials-revoked")
    kept.transport.write(chunk(b'{"n": 3}\n') + b"0\r\n\r\n")
    await wait_for(lambda: kept.is_closed, what="the kept stream's answer")
    assert json.loads(bytes(kept.received).partition(b"\r\n\r\n")[2])["accepted"] == 2
    await live.wait_for(b'"n":3')
    assert sorted(numbers(bytes(live.received))) == [1, 2, 3]
    assert ingest.rejected["credentials-revoked"] == 1 and ingest.streaming == {}
    await live.close()


@pytest_twisted.ensureDeferred
async def test_a_streaming_publish_ends_when_its_jwt_expires(daemon, tmp_path: Path) -> None:
    """A publisher may not go on with a token past its exp (a subscriber's stream may not either): cut short
    there, answered with what it published and why, counted as token-expired; a publish without exp goes on."""
    import time

    import jwt

    from .test_streaming_publish import HEAD, INGEST, chunk, numbers

    secret = "an-hmac-secret-of-thirty-two-bytes!!"
    key = tmp_path / "jwt-key"
    key.write_text(secret)
    service = await daemon(INGEST.format(extra=f", auth.type: bearer, auth.jwt.key.file: {key}, auth.jwt.algorithms: HS256, "
                                               "auth.jwt.audience: sse", sink_extra=""))
    port, ingest = service.port_of("In"), service.sources["In"]
    live = await subscribe(service.port_of("Out"), "/events")

    def streaming(expires: float, first: int):
        token = jwt.encode({"aud": "sse", "exp": int(expires), "streams": "*"}, secret, algorithm="HS256")
        head = HEAD.replace(b"\r\n\r\n", f"\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
        return raw_request(port, head + chunk(b'{"n": %d}\n' % first))

    expiring, lasting = await streaming(time.time() + 2, 1), await streaming(4_000_000_000, 2)
    await wait_for(lambda: sorted(numbers(bytes(live.received))) == [1, 2], what="a line of each stream delivered")
    await wait_for(lambda: expiring.is_closed, what="the stream whose token expired to be answered", timeout=10)
    answer = json.loads(bytes(expiring.received).partition(b"\r\n\r\n")[2])
    assert (answer["accepted"], answer["ended"]) == (1, "token-expired")
    assert ingest.rejected["token-expired"] == 1
    lasting.transport.write(chunk(b'{"n": 3}\n') + b"0\r\n\r\n")
    await wait_for(lambda: lasting.is_closed, what="the lasting stream's answer")
    assert json.loads(bytes(lasting.received).partition(b"\r\n\r\n")[2]) == {
        "accepted": 2, "refused": 0, "lines": 2, "refusals": []}
    await live.close()


@pytest.mark.reactor_free
def test_a_cut_streaming_publish_takes_nothing_more_and_its_answer_says_why() -> None:
    from twisted.internet.defer import succeed

    from .test_streaming_publish import answer, consumer

    published: list[int] = []
    publishing, body, _, _, _ = consumer(lambda events: published.extend(e.values["n"] for e in events) or succeed(None))
    body.chunk(b'{"n": 1}\n{"n": 2')
    publishing.cut("credentials-revoked")
    body.chunk(b'}\n{"n": 3}\n')  # what the socket had still: not read
    assert published == [1]
    assert answer(publishing) == {"accepted": 1, "refused": 0, "lines": 1, "refusals": [], "ended": "credentials-revoked"}


@pytest_twisted.ensureDeferred
async def test_tokens_rotated_while_a_reload_opens_history_files_are_renewed_by_the_next_reload(daemon, tmp_path: Path, log_events) -> None:
    """A reload that adds a sink waits for its history file (a thread); a tokens file rotated meanwhile was not read
    by it: the next reload (a second SIGHUP) must still see the rotation, not take it as already applied."""
    from twisted.internet.defer import Deferred

    from .conftest import write_config

    tokens = tmp_path / "tokens"
    tokens.write_text(f"{STATIC_TOKEN}\n")
    text = config(ingest={"auth.type": "bearer", "auth.tokens.file": tokens})
    service = await daemon(text)
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    port = service.port_of("In")
    write_config(tmp_path, text.replace("sinks:\n", "sinks:\n  Added: {type: sse-server, stream: Events, server.host: 127.0.0.1, "
                                                     "server.port: 0, server.path: added}\n"))
    opening: Deferred[None] = Deferred()
    prepare = service.prepare
    service.prepare = lambda new, changes: opening.addCallback(lambda _: prepare(new, changes))  # type: ignore[method-assign]
    first = reloader.reload()
    rotated = "a-rotated-static-token-0123456789"
    tokens.write_text(f"{rotated}\n")  # while the history files are opened
    opening.callback(None)
    assert await deadline(first) is True
    assert await deadline(reloader.reload()) is True  # the SIGHUP that came with the rotation
    assert status(await post(port, headers=f"Authorization: Bearer {STATIC_TOKEN}\r\n")) == 401, "the removed token"
    assert status(await post(port, headers=f"Authorization: Bearer {rotated}\r\n")) == 200
    said = [formatEvent(e) or "" for e in log_events]
    assert any("credentials renewed for In" in line for line in said)


@pytest_twisted.ensureDeferred
async def test_credentials_a_renewal_could_not_read_are_renewed_by_the_next_reload(daemon, tmp_path: Path, log_events) -> None:
    """A tokens file caught half written by the renewal's read leaves the old tokens running; once it is whole, the
    next reload must renew them (its content is what the reload saw before, but not what the guard holds)."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{STATIC_TOKEN}\n")
    service = await daemon(config(ingest={"auth.type": "bearer", "auth.tokens.file": tokens}))
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    port = service.port_of("In")
    rotated = "a-rotated-static-token-0123456789"
    tokens.write_text(f"{rotated}\n")
    adopt = service.adopt_config

    def half_written(new) -> None:  # the file is rewritten in place (truncated) right as the renewal reads it
        adopt(new)
        tokens.write_text("")

    service.adopt_config = half_written  # type: ignore[method-assign]
    assert await deadline(reloader.reload()) is True
    assert any("kept the credentials it had" in (e.get("log_format") or "") for e in log_events)
    assert status(await post(port, headers=f"Authorization: Bearer {STATIC_TOKEN}\r\n")) == 200, "the running tokens stay"
    service.adopt_config = adopt  # type: ignore[method-assign]
    tokens.write_text(f"{rotated}\n")  # the write completes; the operator reloads again
    assert await deadline(reloader.reload()) is True
    assert status(await post(port, headers=f"Authorization: Bearer {STATIC_TOKEN}\r\n")) == 401, "the removed token"
    assert status(await post(port, headers=f"Authorization: Bearer {rotated}\r\n")) == 200


@pytest_twisted.ensureDeferred
async def test_a_hub_connection_let_through_before_a_renewal_and_opened_after_it_is_checked_too(daemon, tmp_path: Path) -> None:
    """A hub request passes each stream's guard in turn: one stream's password, then another's, hashed on the pool.
    A renewal of the first stream's users while the second hash runs finds no stream yet; the connection that opens
    once the hash is done must not read the first stream with a password its users file no longer holds."""
    from twisted.internet.defer import Deferred

    first, second = tmp_path / "first-users", tmp_path / "second-users"
    first.write_text(f"alice:{bcrypt_hash(PASSWORD)}\n")
    second.write_text(f"alice:{bcrypt_hash(PASSWORD)}\n")
    hub = "".join(f"  {name}: {{type: sse-server, stream: {name}, schema: 'n int', server.host: 127.0.0.1, server.port: 0, "
                  f"server.path: {name.lower()}, hub.path: /hub, auth.type: basic, auth.users.file: {users}}}\n"
                  for name, users in (("First", first), ("Second", second)))
    service = await daemon(f"sinks:\n{hub}")
    reloader = Reloader(service, [str(tmp_path / "sse.yaml")])
    port, sink = service.port_of("First"), service.sinks["First"].sink
    gate = service.built["Second"].guard.passwords
    hashing, decide, asked = Deferred(), gate.decide, []

    def slow(check, host, gone):  # a hash that takes a while
        asked.append(check)
        return hashing.addCallback(lambda _: decide(check, host, gone))

    gate.decide = slow
    late = await raw_request(port, b"GET /hub?stream=First&stream=Second HTTP/1.1\r\nHost: x\r\n"
                                   + f"Authorization: {basic('alice', PASSWORD)}\r\n\r\n".encode())
    await wait_for(lambda: asked, what="the second stream's password check to start")
    first.write_text(f"alice:{bcrypt_hash('a new password for alice')}\n")
    assert await deadline(reloader.reload()) is True
    hashing.callback(None)
    await wait_for(lambda: late.is_closed, what="the hub connection of the changed password to end")
    assert REVOKED in late.received
    assert sink.counters["closed_credentials_revoked"] == 1


@pytest.mark.reactor_free
def test_a_streaming_publish_whose_body_had_ended_is_not_cut_short_by_a_renewal() -> None:
    """Its whole body was read; only the bus's acknowledgement is awaited. Nothing is cut: its answer must not say it
    ended early, nor count the rest of a body that has no rest."""
    from twisted.internet.defer import Deferred

    from .test_streaming_publish import answer, consumer

    acknowledged: Deferred[None] = Deferred()
    publishing, body, _, _, rejected = consumer(lambda events: acknowledged)
    body.chunk(b'{"n": 1}\n{"n": 2}\n')
    body.end()
    cut = publishing.cut("credentials-revoked")
    acknowledged.callback(None)
    assert answer(publishing) == {"accepted": 2, "refused": 0, "lines": 2, "refusals": []}
    reading, more, _, _, _ = consumer(lambda events: acknowledged)
    more.chunk(b'{"n": 3}\n')
    assert (cut, reading.cut("credentials-revoked")) == (False, True), "what the ingest counts: only a body cut short"


@pytest_twisted.ensureDeferred
async def test_a_hub_connection_ended_at_its_tokens_expiry_is_counted_as_token_expired(daemon, tmp_path: Path) -> None:
    """sse_daemon_sink_streams_ended_total counts the streams a sink ended because their access ended: a hub
    connection ended at its JWT's exp is one, as one ended because its token was removed is."""
    import jwt

    key = tmp_path / "jwt-key"
    secret = "an-hmac-secret-of-thirty-two-bytes!!"
    key.write_text(secret)
    clock = Clock()
    clock.advance(1_800_000_000)
    hub = HUB.replace("auth.tokens.file: TOKENS", f"auth.jwt.key.file: {key}, auth.jwt.algorithms: HS256, auth.jwt.audience: sse")
    service = await daemon(hub, clock=clock)
    signed = jwt.encode({"aud": "sse", "exp": 1_800_000_030, "streams": "*"}, secret, algorithm="HS256")
    connection = await subscribe(service.port_of("Open"), "/hub?stream=Open&stream=Guarded", f"Authorization: Bearer {signed}\r\n")
    clock.advance(30)
    await wait_for(lambda: connection.is_closed, what="the hub connection to end at its token's expiry")
    assert b": access token expired; reconnect with a new one\n" in connection.received
    assert sink_figures(service.sinks["Guarded"])["ended"] == {"token-expired": 1, "credentials-revoked": 0}
    assert sink_figures(service.sinks["Open"])["ended"] == {"token-expired": 0, "credentials-revoked": 0}


def test_fresh_users_keep_what_was_verified_for_unchanged_entries_only() -> None:
    """A reload's fresh users file does not make every unchanged user's next reconnect cost a hash again;
    a user whose entry changed, or who was removed, is hashed (and refused) as any first check is."""
    alice, bob = bcrypt_hash("alices"), bcrypt_hash("bobs")
    connector = next(c for c in validate(load_yaml(config())).sinks if c.name == "Events")
    before = BasicAuth({"alice": alice, "bob": bob}, "r")
    for user, password in (("alice", "alices"), ("bob", "bobs")):
        check = before.check(Credentials(basic=(user, password)), 0.0)
        assert isinstance(check, PasswordCheck) and before.settle(check, True, 0.0) == Allowed(user)
    guard = Guard(Resource(), connector, Clock(), Counter(), authenticator=before)
    after = BasicAuth({"alice": alice, "bob": bcrypt_hash("bobs new"), "carol": bcrypt_hash("carols")}, "r")
    guard.renew(after, None)
    assert after.check(Credentials(basic=("alice", "alices")), 1.0) == Allowed("alice"), "unchanged: remembered"
    assert isinstance(after.check(Credentials(basic=("bob", "bobs")), 1.0), PasswordCheck), "changed: hashed again"
    removed = BasicAuth({"alice": alice}, "r")
    guard.renew(removed, None)
    assert removed.check(Credentials(basic=("alice", "alices")), 2.0) == Allowed("alice")
    assert isinstance(removed.check(Credentials(basic=("bob", "bobs")), 2.0), PasswordCheck), "removed: not let in"


def test_a_token_that_only_expired_is_left_to_its_expiry_not_counted_as_revoked() -> None:
    """A recheck at (or past) a JWT's exp ends nothing: the stream's expiry timer ends it and counts it as
    token-expired; a token whose signature the fresh key refuses is revoked."""
    import jwt

    from sse_daemon.edge.auth import BearerAuth, JwtVerifier

    secret, other = "an-hmac-secret-of-thirty-two-bytes!!", "another-hmac-secret-of-32-bytes!!!!"
    connector = next(c for c in validate(load_yaml(config())).sinks if c.name == "Events")

    def verifier(key: str) -> BearerAuth:
        return BearerAuth([], JwtVerifier(key, ["HS256"], "sse", None, "streams", "S"), "r")

    request = DummyRequest([b"events"])
    signed = jwt.encode({"aud": "sse", "exp": 1_000, "streams": "*"}, secret, algorithm="HS256")
    request.requestHeaders.setRawHeaders(b"authorization", [f"Bearer {signed}".encode()])
    guard = Guard(Resource(), connector, Clock(), Counter(), authenticator=verifier(secret))
    assert guard.still_allowed(request, 500.0)
    assert guard.still_allowed(request, 1_000.0), "expired: its expiry timer's to end"
    guard.renew(verifier(other), None)
    assert not guard.still_allowed(request, 1_000.0), "signed with a key no longer accepted: revoked"
