"""One state per machine: every command finds the running server's embedded Redis, or refuses to start a
second one beside it (issue 17); ``nba status`` says which Redis, what is live and which servers use it."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest
import redis

from nba_service.app import discovery
from nba_service.settings import Settings, default_data_dir
from nba_service.store import heartbeats, keys
from nba_service.store.embedded import DB_FILE, EmbeddedRedis
from nba_service.store.policy_store import PolicyStore
from tests.conftest import CLUSTER, SAMPLE_POLICIES, wait_until


@pytest.fixture
def machine(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """A private default data dir (``XDG_STATE_HOME``) and no ``NBA_*`` settings: the environment of the
    processes a test starts."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for name in list(os.environ):
        if name.startswith("NBA_"):
            monkeypatch.delenv(name)
    return dict(os.environ)


def nba(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``nba ARGS`` as a user runs it, in its own process."""
    return subprocess.run(
        [sys.executable, "-m", "nba_service.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def advertisements() -> list[pathlib.Path]:
    return sorted((pathlib.Path(default_data_dir()) / discovery.ADVERTISEMENTS).glob("*.json"))


def test_a_command_without_data_dir_reaches_the_running_servers_redis_and_one_with_another_refuses(
    tmp_path: pathlib.Path, machine: dict[str, str]
) -> None:
    server_dir, other_dir = tmp_path / "server-data", tmp_path / "other-data"
    ready = tmp_path / "ready.json"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nba_service.cli",
            "serve",
            "--port",
            "0",
            "--metrics-port",
            "-1",
            "--data-dir",
            str(server_dir),
            "--policies",
            str(SAMPLE_POLICIES),
            "--ready-file",
            str(ready),
        ],
        env=machine,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = None
    try:
        wait_until(lambda: ready.exists() or process.poll() is not None, 60, "nba serve to become ready")
        assert ready.exists(), f"nba serve exited with {process.returncode}"
        info = json.loads(ready.read_text())
        assert [p.name for p in advertisements()] == [f"{process.pid}.json"]  # in the default data dir
        client = redis.Redis.from_url(info["redis_url"])
        assert PolicyStore(client).live() == 1  # published at start-up

        # no --data-dir: the server's Redis, not a second one in the default data dir
        published = nba(machine, "policy", "publish", str(SAMPLE_POLICIES), "-m", "from another shell")
        assert published.returncode == 0, published.stderr
        assert "as policy version 2" in published.stdout
        assert PolicyStore(client).live() == 2
        assert not (pathlib.Path(default_data_dir()) / DB_FILE).exists()

        def serving(version: str) -> bool:
            return [b["policy_version"] for b in heartbeats.servers(client)] == [version]

        wait_until(lambda: serving("2"), 10, "the server to serve version 2")  # its heartbeat says so

        # another --data-dir: refused, naming both, and nothing started or written there
        refused = nba(machine, "policy", "publish", str(SAMPLE_POLICIES), "--data-dir", str(other_dir))
        assert refused.returncode == 2
        assert os.path.realpath(server_dir) in refused.stderr and os.path.realpath(other_dir) in refused.stderr
        assert "--isolated" in refused.stderr and f"pid {process.pid}" in refused.stderr
        assert not other_dir.exists()
        assert PolicyStore(client).live() == 2

        # nba status: this Redis, what is live, and the server from its heartbeat
        shown = nba(machine, "status", "--json", "-")
        assert shown.returncode == 0, shown.stderr
        status = json.loads(shown.stdout)
        assert status["redis"]["embedded"] and status["redis"]["url"] == info["redis_url"]
        assert status["redis"]["data_dir"] == str(server_dir)
        assert status["redis"]["advertised_by"][0]["pid"] == process.pid
        assert not status["redis"]["started_for_this_command"]
        assert status["policy"]["version"] == 2 and status["policy"]["message"] == "from another shell"
        assert status["model"] is None
        [server] = status["servers"]
        assert int(server["pid"]) == process.pid and server["address"] == f"127.0.0.1:{info['port']}"
        assert server["serving"] == "yes" and server["policy_version"] == "2" and server["host"] == socket.gethostname()
        text = nba(machine, "status").stdout
        assert f"data dir {server_dir}" in text and f"run by nba serve (pid {process.pid})" in text
        assert "policy:  version 2 live" in text and "servers: 1 connected" in text
        assert f"127.0.0.1:{info['port']}" in text

        # the documented way out: a deliberately separate state
        isolated = nba(machine, "policy", "history", "--data-dir", str(other_dir), "--isolated")
        assert isolated.returncode == 0, isolated.stderr
        assert "no policy version has been published" in isolated.stdout
        assert PolicyStore(client).live() == 2
    finally:
        if client is not None:
            client.close()
        process.send_signal(signal.SIGTERM)
        process.wait(60)
        process.stderr.close()
    assert process.returncode == 0
    assert advertisements() == []  # withdrawn on a clean exit

    # the server is gone: the same command now uses the data dir it is given
    history = nba(machine, "policy", "history", "--data-dir", str(server_dir))
    assert history.returncode == 0 and "from another shell" in history.stdout


def _advert(data_dir: pathlib.Path, redis_url: str, pid: int, process_started: float) -> pathlib.Path:
    folder = pathlib.Path(default_data_dir()) / discovery.ADVERTISEMENTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{pid}.json"
    record = {
        "data_dir": str(data_dir),
        "redis_url": redis_url,
        "pid": pid,
        "started_at": time.time(),
        "process_started": process_started,
        "version": "test",
    }
    path.write_text(json.dumps(record))
    return path


def test_a_stale_advertisement_is_ignored_and_removed(tmp_path, machine, redis_url):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(gone.pid).create_time()
    gone.wait()  # exited and reaped: its pid no longer runs
    path = _advert(tmp_path / "server-data", redis_url, gone.pid, started)
    assert discovery.live_servers() == []
    assert not path.exists()
    settings = Settings(data_dir=str(tmp_path / "mine"))
    assert discovery.resolve(settings, explicit_data_dir=True) is settings


def test_an_advertisement_of_a_reused_pid_or_a_silent_redis_is_ignored(tmp_path, machine, redis_url):
    me = psutil.Process()
    reused = _advert(tmp_path / "a", redis_url, os.getpid(), me.create_time() - 3600)  # another process's pid
    assert discovery.live_servers() == [] and not reused.exists()
    silent = _advert(tmp_path / "b", f"unix://{tmp_path}/no.socket", os.getpid(), me.create_time())
    assert discovery.live_servers() == []
    assert silent.exists()  # its server runs: it may be starting, the file stays


def test_resolve_uses_the_running_servers_data_dir_or_refuses(tmp_path, machine, redis_url):
    server_dir, mine = tmp_path / "server-data", tmp_path / "mine"
    _advert(server_dir, redis_url, os.getpid(), psutil.Process().create_time())
    [live] = discovery.live_servers()
    assert live.data_dir == str(server_dir)

    chosen = discovery.resolve(Settings(), explicit_data_dir=False)
    assert chosen.data_dir == str(server_dir)
    given = Settings(data_dir=str(server_dir))
    assert discovery.resolve(given, explicit_data_dir=True) is given
    for settings in (Settings(data_dir=str(mine), isolated=True), Settings(data_dir=str(mine), redis_url=redis_url)):
        assert discovery.resolve(settings, explicit_data_dir=True) is settings
    with pytest.raises(discovery.StateConflict) as refused:
        discovery.resolve(Settings(data_dir=str(mine)), explicit_data_dir=True)
    assert str(server_dir) in str(refused.value) and str(mine) in str(refused.value)

    other = discovery.Advertisement(str(tmp_path / "third"), redis_url, 1, time.time(), 0.0, "test", tmp_path)
    with pytest.raises(discovery.StateConflict, match="different data dirs"):
        discovery.resolve(Settings(), explicit_data_dir=False, servers=[live, other])
    # a server on the default data dir is the default's, whatever else runs
    default = discovery.Advertisement(default_data_dir(), redis_url, 2, time.time(), 0.0, "test", tmp_path)
    settings = Settings()
    assert discovery.resolve(settings, explicit_data_dir=False, servers=[live, default]) is settings


def test_processes_on_one_data_dir_share_one_redis_server(tmp_path):
    first, second = EmbeddedRedis(tmp_path / "data"), EmbeddedRedis(tmp_path / "data")
    url = first.start()
    try:
        assert second.start() == url and first.owner and not second.owner
        pid = first.pid
        second.stop()  # joined, and the first still uses it: left running
        assert psutil.pid_exists(pid) and redis.Redis.from_url(url).ping()
    finally:
        first.stop()
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_the_starter_leaves_the_redis_to_a_server_that_joined_it(tmp_path):
    """A command started the embedded Redis, then a server joined it: the command's exit does not stop it."""
    server = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a server's process
    command = EmbeddedRedis(tmp_path / "data")
    url = command.start()
    redis_pid = command.pid
    client = redis.Redis.from_url(url)
    try:
        client.hset(
            keys.server("x"),
            mapping={"pid": server.pid, "host": socket.gethostname(), "started_at": f"{time.time():.3f}"},
        )
        client.zadd(keys.SERVERS, {"x": time.time()})
        command.stop()
        assert client.ping() and psutil.pid_exists(redis_pid)
        server.send_signal(signal.SIGTERM)  # the server is gone (its heartbeat not yet expired)
        server.wait(10)
        last = EmbeddedRedis(tmp_path / "data")
        assert last.start() == url and not last.owner
    finally:
        client.close()
        if server.poll() is None:
            server.kill()
            server.wait()
    last.stop()  # the last one out stops it
    assert not psutil.pid_exists(redis_pid) or psutil.Process(redis_pid).status() == psutil.STATUS_ZOMBIE


def test_a_settings_file_of_a_dead_redis_is_ignored(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "redis.pid").write_text(str(gone.pid))
    (data / (DB_FILE + ".settings")).write_text(
        json.dumps(
            {
                "pidfile": str(tmp_path / "redis.pid"),
                "unixsocket": str(tmp_path / "redis.socket"),
                "dbdir": str(data),
                "dbfilename": DB_FILE,
            }
        )
    )
    embedded = EmbeddedRedis(data)
    url = embedded.start()
    try:
        assert embedded.owner and url != f"unix://{tmp_path / 'redis.socket'}"
        assert redis.Redis.from_url(url).ping()
    finally:
        embedded.stop()


def test_a_server_writes_its_heartbeat_and_removes_it_when_it_stops(start_server, published, redis_client):
    server = start_server()
    [beat] = heartbeats.servers(redis_client)
    assert beat["pid"] == str(os.getpid()) and beat["address"] == f"127.0.0.1:{server.port}"
    assert beat["policy_version"] == str(published) and beat["serving"] == "yes"
    assert 0 < redis_client.pttl(keys.server(beat["id"])) <= heartbeats.HEARTBEAT_TTL_SECONDS * 1000
    server.stop()
    assert heartbeats.servers(redis_client) == []
    assert not redis_client.exists(keys.server(beat["id"])) and not redis_client.zcard(keys.SERVERS)


def test_status_of_a_redis_no_server_uses(capsys, redis_url, redis_client):
    from nba_service.cli import main

    assert main(["status", "--redis-url", redis_url]) == 0
    out = capsys.readouterr().out
    shown = f"Redis Cluster via {redis_url}" if CLUSTER else redis_url
    assert f"redis:   {shown} (--redis-url / NBA_REDIS_URL)" in out
    assert "policy:  none published" in out and "model:   none published" in out
    assert "servers: none" in out
