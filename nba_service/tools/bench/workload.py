"""What the benchmark loads and sends: customers, journeys, requests, generated offer sets."""

from __future__ import annotations

import json
import os
import pathlib
import random
import time

import redis
import yaml
from google.protobuf import json_format

from nba_service.domain import Event
from nba_service.policies.parser import load_policy_dir, read_policy_dir
from nba_service.proto.nba.v1 import decision_pb2 as pb
from nba_service.store import codec, keys
from nba_service.store.customer_import import import_customers
from nba_service.store.state import JOURNEY_TTL_SECONDS
from nba_service.tools.bench.config import BenchError
from nba_service.tools.traffic import ScenarioMix, generate_customers

__all__ = ["customer_id", "decide_requests", "load_customers", "write_journeys", "write_offer_policies"]

POPULATION_CHUNK = 100_000
"""Customers are generated and imported this many at a time."""
JOURNEY_WINDOW_SECONDS = 30 * 86400
"""Past journey events are spread over this many seconds before now."""


def customer_id(index: int) -> str:
    """The id :func:`load_customers` gives the customer at ``index`` of the population."""
    return f"c{index // POPULATION_CHUNK:02d}{index % POPULATION_CHUNK:06d}"


def load_customers(client: redis.Redis, work: pathlib.Path, start: int, stop: int, seed: int) -> int:
    """Write customers ``start`` to ``stop`` as CRM exports and import them (pipelined)."""
    loaded = 0
    for chunk in range(start // POPULATION_CHUNK, (stop - 1) // POPULATION_CHUNK + 1):
        first = chunk * POPULATION_CHUNK
        low, high = max(start, first) - first, min(stop, first + POPULATION_CHUNK) - first
        records = generate_customers(high, seed + chunk, prefix=f"c{chunk:02d}")[low:high]
        path = work / f"customers-{chunk:02d}-{low}.jsonl"
        with path.open("w") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")
        report = import_customers(client, path, batch_size=2000, progress=False)
        path.unlink()
        if report.refused:
            raise BenchError(f"{len(report.refused)} generated profiles refused, first: {report.refused[0]}")
        loaded += report.loaded
    return loaded


def write_journeys(client: redis.Redis, start: int, stop: int, share: float, seed: int) -> tuple[int, int]:
    """Give a ``share`` of customers ``start``..``stop`` 3 to 10 past events of the scenario mix over
    the last 30 days, journey entries and open carts in the format the decision path writes;
    returns (customers, events)."""
    rng = random.Random(seed * 7919 + start)
    moments = ScenarioMix(["x"], seed=seed + start, unknown_share=0.0)
    now = time.time()
    customers = events = 0
    with client.pipeline(transaction=False) as pipe:
        for index in range(start, stop):
            if rng.random() >= share:
                continue
            cid = customer_id(index)
            journey, opened = keys.journey(cid), keys.open_journeys(cid)
            for ts in sorted(now - rng.uniform(0, JOURNEY_WINDOW_SECONDS) for _ in range(rng.randint(3, 10))):
                request = moments.next().request
                kind = request.event.WhichOneof("kind")
                fields = json_format.MessageToDict(getattr(request.event, kind), preserving_proto_field_name=True)
                event = Event(kind, fields)
                pipe.lpush(journey, codec.encode_journey(ts, event.type, request.origin_channel, fields))
                if event.type == "cart_abandon":
                    pipe.hset(opened, f"cart:{event.fields['cart_id']}", codec.encode_open_journey(ts, fields))
                    pipe.expire(opened, JOURNEY_TTL_SECONDS)
                elif event.type == "custom" and event.fields.get("name") == "purchase":
                    pipe.delete(opened)
                events += 1
            pipe.expire(journey, JOURNEY_TTL_SECONDS)
            customers += 1
            if customers % 1000 == 0:
                pipe.execute()
        pipe.execute()
    return customers, events


def decide_requests(population: int, count: int, seed: int, atm_only: bool) -> list[pb.DecideRequest]:
    """``count`` requests of the scenario mix over a skewed population (only ATM declines if ``atm_only``)."""
    mix = ScenarioMix([customer_id(i) for i in range(population)], seed=seed)
    requests: list[pb.DecideRequest] = []
    for _ in range(count * 50):  # ATM declines are about a fifth of the mix
        moment = mix.next()
        if not atm_only or moment.scenario == "atm_decline":
            requests.append(moment.request)
            if len(requests) == count:
                break
    return requests


def write_offer_policies(
    folder: str | os.PathLike[str],
    offers: int,
    channels_from: str | os.PathLike[str],
    seed: int = 1,
    budget: int | None = None,
) -> pathlib.Path:
    """A policy set of ``offers`` offers that all answer ``atm_decline`` and are always eligible,
    over the channels of ``channels_from``; validated.

    Each offer may use the ATM screen (open for every decline) and two channels
    of the set in turn; no contact limits, so none is ever capped. With ``budget``,
    each offer has a budget of that many sends a day (every decision that sends it
    reserves a unit on the offer's own slot).
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    channels = [
        c for text in read_policy_dir(channels_from).values() for c in (yaml.safe_load(text) or {}).get("channels", [])
    ]
    ids = [c["id"] for c in channels]
    rng = random.Random(seed)
    specs = []
    for i in range(offers):
        own = [ids[(i + k) % len(ids)] for k in range(2)]
        if "atm_screen" in ids and "atm_screen" not in own:
            own.append("atm_screen")
        specs.append(
            {
                "id": f"bench_offer_{i:04d}",
                "name": f"Bench offer {i}",
                "category": f"bench_{i % 8}",
                "events": ["atm_decline"],
                "value": round(rng.uniform(1, 50), 2),
                "prior": round(rng.uniform(0.01, 0.3), 3),
                "channels": own,
                "content": {"default": f"{{first_name}}, offer {i}: {{amount}} {{currency}} sorted."},
                **({"budget": {"max": budget, "per": "1d"}} if budget is not None else {}),
            }
        )
    (folder / "channels.yaml").write_text(yaml.safe_dump({"channels": channels}, sort_keys=False))
    (folder / "settings.yaml").write_text(yaml.safe_dump({"settings": {"no_action_threshold": 0.0}}))
    (folder / "offers.yaml").write_text(yaml.safe_dump({"offers": specs}, sort_keys=False, width=1000))
    policy = load_policy_dir(folder)
    if len(policy.offers) != offers:
        raise BenchError(f"generated {len(policy.offers)} offers instead of {offers}")
    return folder
