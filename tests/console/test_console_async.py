"""The console's pages never wait for Redis on its event loop: while Redis holds one page's call, every other
request is still answered (nba_service/console/app.py runs its Redis reads and writes in the threadpool)."""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.parse
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from nba_service.console.app import ConsoleConfig, create_app
from nba_service.policies.parser import read_policy_dir
from nba_service.store.embedded import EmbeddedRedis
from nba_service.store.policy_store import PolicyStore
from tests.conftest import SAMPLE_POLICIES, wait_until
from tests.console.helpers import csrf_of

pytestmark = pytest.mark.standalone_only  # the relay forwards to one Redis server

PAGES = [
    ("GET", "/overview/live", None, 200),
    ("GET", "/offers", None, 200),
    ("GET", "/levers", None, 200),
    ("POST", "/levers/preview", {}, 200),
    ("POST", "/levers/publish", {"message": ""}, 422),
    ("GET", "/history", None, 200),
    ("GET", "/history/1", None, 200),
    ("GET", "/history/1/rollback", None, 200),
    ("POST", "/history/1/rollback", {"confirm": "no"}, 303),
    ("GET", "/learning", None, 200),
    ("GET", "/customer", None, 200),
    ("GET", "/customer?id=c00001", None, 200),
]
"""Every page that reads or writes Redis: (method, path, form without the CSRF token, the status it answers)."""


class HeldRedis:
    """A TCP relay to the test Redis that, once :meth:`hold` is called, keeps what clients send until
    :meth:`release`: a Redis that does not answer for as long as the test says. ``arrived`` is set when a
    command reaches it while it holds."""

    def __init__(self, url: str) -> None:
        parsed = urllib.parse.urlparse(url)
        self._upstream: str | tuple[str, int]
        if parsed.scheme == "unix":
            self._family, self._upstream = socket.AF_UNIX, parsed.path
        elif parsed.scheme == "redis":
            self._family, self._upstream = socket.AF_INET, (parsed.hostname or "127.0.0.1", parsed.port or 6379)
        else:
            raise ValueError(f"the relay forwards plain connections only, not {parsed.scheme}://")
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.arrived = threading.Event()
        self._holding = threading.Event()
        self._released = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads = [threading.Thread(target=self._accept, name="held-redis-accept", daemon=True)]
        self._threads[0].start()

    def hold(self) -> None:
        self._holding.set()

    def release(self) -> None:
        self._released.set()

    def _accept(self) -> None:
        while True:
            try:
                inner, _ = self._listener.accept()
            except OSError:
                return  # closed
            outer = socket.socket(self._family, socket.SOCK_STREAM)
            outer.connect(self._upstream)
            self._sockets += [inner, outer]
            for source, target, held in ((inner, outer, True), (outer, inner, False)):
                pump = threading.Thread(target=self._pump, args=(source, target, held), daemon=True)
                self._threads.append(pump)
                pump.start()

    def _pump(self, source: socket.socket, target: socket.socket, held: bool) -> None:
        try:
            while data := source.recv(65536):
                if held and self._holding.is_set() and not self._released.is_set():
                    self.arrived.set()
                    self._released.wait()
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.release()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        for end in self._sockets:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(10)
        for end in self._sockets:
            end.close()


@pytest.fixture(scope="module")
def plain_redis_url(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The suite's Redis when the relay can forward to it (``unix://``, ``redis://``); else (a ``rediss://``
    NBA_TEST_REDIS_URL) a real embedded Redis of this module's own."""
    if urllib.parse.urlparse(redis_url).scheme in ("unix", "redis"):
        yield redis_url
        return
    embedded = EmbeddedRedis(tmp_path_factory.mktemp("relayed-redis"))
    yield embedded.start()
    embedded.stop()


@pytest.fixture
def held_redis(plain_redis_url: str) -> Iterator[tuple[HeldRedis, redis.Redis]]:
    """The relay, and a client of that Redis through it (flushed, the sample policy live)."""
    upstream = redis.Redis.from_url(plain_redis_url)
    upstream.flushdb()
    PolicyStore(upstream).publish(read_policy_dir(SAMPLE_POLICIES), author="tests", message="sample")
    options = upstream.connection_pool.connection_kwargs
    relay = HeldRedis(plain_redis_url)
    client = redis.Redis(
        host="127.0.0.1",
        port=relay.port,
        db=options.get("db", 0),
        username=options.get("username"),
        password=options.get("password"),
    )
    yield relay, client
    client.close()
    relay.close()
    upstream.close()


@pytest.mark.parametrize(("method", "path", "form", "status"), PAGES, ids=[f"{m} {p}" for m, p, _, _ in PAGES])
def test_a_page_waiting_for_redis_does_not_hold_up_the_other_requests(held_redis, method, path, form, status):
    relay, client = held_redis
    with TestClient(create_app(ConsoleConfig(client=client))) as console:  # one event loop for every request
        data = None if form is None else {"csrf": csrf_of(console.get("/levers").text), **form}
        relay.hold()
        answers: dict[str, Any] = {}

        def ask(name: str, *args: Any, **kwargs: Any) -> threading.Thread:
            def call() -> None:
                answers[name] = console.request(*args, **kwargs)

            thread = threading.Thread(target=call, name=f"console-{name}", daemon=True)
            thread.start()
            return thread

        asked = [ask("page", method, path, data=data, follow_redirects=False)]
        try:
            wait_until(relay.arrived.is_set, 30, f"{method} {path} to send Redis a command")
            asked.append(ask("static", "GET", "/static/console.css"))
            wait_until(lambda: "static" in answers, 30, f"a static file while Redis holds {method} {path}")
            assert "page" not in answers  # Redis still holds the page's command
            assert answers["static"].status_code == 200
        finally:
            relay.release()  # then both are answered before the console stops
            for thread in asked:
                thread.join(60)
        assert answers["page"].status_code == status, answers["page"].text
