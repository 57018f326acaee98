"""``nba bench`` end to end with tiny counts: it runs and reports every documented key.
No timing is asserted: speed is what the benchmark measures, not what a test checks."""

from __future__ import annotations

import json
import math
from collections import Counter

import psutil
import pytest

from nba_service.tools.bench import BenchConfig, run_sweep, write_offer_policies
from nba_service.tools.bench.cluster import _hot_customer
from nba_service.tools.bench.workload import customer_id, decide_requests
from nba_service.cli import main
from nba_service.observability.scrape import histogram_quantile, subtract
from nba_service.policies.parser import load_policy_dir
from tests.conftest import SAMPLE_POLICIES

TINY = ["--customers", "2000", "--sequential", "200", "--seconds", "0.5", "--concurrency", "1,4"]


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def _stopped(pids: dict[str, int]) -> bool:
    """The echo server, nba serve and the embedded Redis it started have all exited."""
    return not any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
                   for pid in pids.values())


def test_bench_runs_end_to_end_and_writes_the_documented_json(tmp_path, capsys):
    out = tmp_path / "bench.json"

    code = main(["bench", *TINY, "--policies", str(SAMPLE_POLICIES), "--json", str(out)])

    printed = capsys.readouterr().out
    assert code == 0
    assert "Decide/Echo" in printed and "Echo+Redis" in printed and "max throughput" in printed
    result = json.loads(out.read_text())
    for side in ("echo", "echo_redis", "decide"):
        for key in ("p50_us", "p99_us", "max_rps"):
            assert _positive(result[side][key]), (side, key, result[side][key])
        assert result[side]["errors"] == {}
    assert _positive(result["ratios"]["p50"]) and _positive(result["ratios"]["throughput"])
    assert _positive(result["ratios"]["echo_redis_p50"]) and _positive(result["echo_redis"]["redis_cpu_us_per_call"])
    for key in ("server_p50_us", "server_p99_us", "cpu_us_per_decision", "redis_bytes_per_customer",
                "server_rss_bytes"):
        assert _positive(result[key]), (key, result[key])
    assert result["machine"]["cores"] >= 1 and result["machine"]["grpc"]
    assert result["config"]["customers"] == 2000 and result["config"]["policy_offers"] > 0
    assert _stopped(result["pids"])


def test_offers_sweep_publishes_each_set_and_reports_the_cost_per_offer():
    config = BenchConfig(customers=500, sequential=50, warmup=10, seconds=0.2, concurrency=(1,),
                         policies=str(SAMPLE_POLICIES))

    result = run_sweep("offers", (5, 20), config)

    assert [p["offers"] for p in result["points"]] == [5, 20]
    assert all(_positive(p["p50_us"]) and p["errors"] == {} for p in result["points"])
    assert math.isfinite(result["us_per_offer"]) and _positive(result["echo"]["p50_us"])
    assert _stopped(result["pids"])


def test_generated_offers_all_answer_atm_declines_and_are_always_eligible(tmp_path):
    write_offer_policies(tmp_path, 50, SAMPLE_POLICIES)

    policy = load_policy_dir(tmp_path)

    assert len(policy.offers) == 50
    assert all(o.events == ("atm_decline",) and o.eligible_when is None and "atm_screen" in o.channels
               for o in policy.offers)
    assert {c.id for c in policy.channels} == {c.id for c in load_policy_dir(SAMPLE_POLICIES).channels}
    assert not policy.settings.contact_limits


def test_quantiles_of_the_observations_between_two_scrapes():
    before = {0.001: 10.0, 0.002: 10.0, float("inf"): 10.0}
    after = {0.001: 10.0, 0.002: 110.0, float("inf"): 110.0}

    between = subtract(after, before)

    assert histogram_quantile(between, 0.5) == 0.0015
    assert histogram_quantile({0.001: 0.0, float("inf"): 0.0}, 0.5) is None


def test_cluster_bench_reports_every_primary_with_its_share_of_keys_and_redis_cpu(tmp_path, capsys):
    out = tmp_path / "cluster.json"

    code = main(["bench", "--redis-mode", "cluster", "--shards", "2", "--customers", "500", "--seconds", "0.5",
                 "--concurrency", "4", "--policies", str(SAMPLE_POLICIES), "--json", str(out)])

    printed = capsys.readouterr().out
    assert code == 0
    assert "saturates at" in printed and "per primary" in printed
    result = json.loads(out.read_text())
    baseline, cluster = result["rows"]
    assert baseline["mode"] == "standalone" and len(baseline["nodes"]) == 1
    assert cluster["setup"] == "cluster 2" and len({n["node"] for n in cluster["nodes"]}) == 2
    for row in result["rows"]:
        assert row["errors"] == {}, row["setup"]
        assert _positive(row["decisions_per_second"]) and _positive(row["redis_cpu_us_per_decision"])
        assert math.isclose(sum(n["key_share"] for n in row["nodes"]), 1.0)
        assert math.isclose(sum(n["cpu_share"] for n in row["nodes"]), 1.0)
        assert all(n["keys"] > 0 and n["scripts_per_decision"] > 0 for n in row["nodes"]), row["nodes"]
        assert math.isclose(row["saturation_decisions_per_second"], 1e6 / row["busiest_cpu_us_per_decision"])
        assert _stopped(row["pids"])
    assert math.isclose(baseline["scripts_per_decision"], 2.0, rel_tol=0.05)  # read the context, record it
    assert "redis_version" in result and result["machine"]["cores"] >= 1


def test_cluster_bench_flags_are_checked():
    assert main(["bench", "--shards", "2"]) == 1  # without --redis-mode cluster
    assert main(["bench", "--redis-mode", "cluster", "--sweep", "offers"]) == 1
    with pytest.raises(SystemExit):
        main(["bench", "--redis-mode", "cluster", "--hot", "everything"])


def test_hot_customer_requests_send_a_fifth_of_the_decisions_to_one_customer():
    requests = decide_requests(1000, 500, seed=1, atm_only=False)
    before = [r.customer_id for r in requests]

    hot = _hot_customer(requests, 1000)

    assert all(hot[i].customer_id == customer_id(0) for i in range(0, 500, 5))
    assert all(h.customer_id == r.customer_id for i, (h, r) in enumerate(zip(hot, requests, strict=True)) if i % 5)
    assert [r.event for r in hot] == [r.event for r in requests]
    assert [r.customer_id for r in requests] == before  # the pool itself is left as it was
    assert Counter(before)[customer_id(0)] < 100 <= Counter(r.customer_id for r in hot)[customer_id(0)]
