"""Fallback actions: what to show when the state store cannot be reached.

A policy set may declare, per event type, one safe action for inbound
channels: an offer of the set (one that answers the event) on a *session*
channel (``needs_reachable: false``, such as the ATM screen or a web banner:
shown in the customer's own session, so it needs no consent and counts
against no cap)::

    fallbacks:
      - event: atm_decline
        offer: atm_smaller_withdrawal
        channel: atm_screen

When Redis is unavailable, ``Decide`` for that event type answers the
fallback marked ``degraded`` instead of ``UNAVAILABLE``: not recorded, not
learned from, counted in ``nba_decisions_degraded_total``. Without a fallback
the answer is ``UNAVAILABLE`` as before.
"""

from __future__ import annotations

from collections.abc import Mapping

from nba_service.domain import EVENT_FIELDS
from nba_service.policies.model import ChannelSpec, Fallback, OfferSpec
from nba_service.policies.yaml_source import Collector, _Node

__all__ = ["Fallback", "read_fallbacks"]

_KEYS = {"event", "offer", "channel"}


def read_fallbacks(
    parts: list[tuple[_Node, Collector]], channels: Mapping[str, ChannelSpec], offers: Mapping[str, OfferSpec]
) -> dict[str, Fallback]:
    """The fallbacks of every file, by event type; every problem is an issue at its line."""
    found: dict[str, Fallback] = {}
    for node, col in parts:
        if not isinstance(node.value, list):
            col.add(node, "fallbacks: expected a list of {event, offer, channel}")
            continue
        for index, item in enumerate(node.value):
            where = f"fallbacks[{index}]"
            fields = col.mapping(item, where, _KEYS, required=("event", "offer", "channel"))
            if fields is None or not set(fields) >= _KEYS:
                continue
            event = col.text(fields["event"], f"{where}.event")
            offer_id = col.text(fields["offer"], f"{where}.offer")
            channel_id = col.text(fields["channel"], f"{where}.channel")
            if event not in EVENT_FIELDS:
                col.add(fields["event"], f"{where}.event: unknown event type {event!r}")
                continue
            if event in found:
                col.add(fields["event"], f"{where}.event: {event} already has a fallback")
                continue
            offer = offers.get(offer_id)
            if offer is None:
                col.add(fields["offer"], f"{where}.offer: unknown offer {offer_id!r}")
                continue
            if event not in offer.events:
                col.add(fields["offer"], f"{where}.offer: {offer_id} does not answer {event} events")
                continue
            channel = channels.get(channel_id)
            if channel is None:
                col.add(fields["channel"], f"{where}.channel: unknown channel {channel_id!r}")
                continue
            if channel.needs_reachable:
                col.add(
                    fields["channel"],
                    f"{where}.channel: {channel_id} reaches the customer outside their session (it needs "
                    "consent and counts against caps): a fallback must be a session channel "
                    "(needs_reachable: false), such as an ATM screen or a web banner",
                )
                continue
            if channel_id not in offer.channels:
                col.add(fields["channel"], f"{where}.channel: {offer_id} is not sent on {channel_id}")
                continue
            found[event] = Fallback(event, offer_id, channel_id)
    return found
