"""How a campaign's offers become candidates: a policy snapshot with a plan for the ``campaign`` event.

A campaign decision is a live decision for a synthetic moment: event type ``campaign``
(:data:`~nba_service.policies.campaign_section.CAMPAIGN_EVENT`) with the campaign's ``event_fields``, from
origin channel ``campaign``. Its candidates are the campaign's offers (listed, or those answering its
``event``), each on its **outbound** channels only (a campaign sends; it is in no session an inbound channel
could show it in), minus the channels whose volume limit the run has reached. Everything else is the live
path's: the offers' eligibility rules (reading the event fields the campaign gives), validity, decline
suppression, holdings, consent, reachability, channel conditions, quiet hours, frequency caps, budgets,
scoring, arbitration, exploration and content. But for one thing: a channel's ``defer_weight`` weights no arm.
It says what a message read at the end of the quiet hours is worth against one seen at the live moment; a
campaign has no such moment (its own ``send_window`` already chooses when it is read), so a deferred push
competes at its usual priority.

The plan is compiled by the snapshot's own stages (:mod:`nba_service.policies.snapshot`) over the live offer
numbering, so arms, models and contact-limit rows are the live ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from nba_service.domain import Event
from nba_service.policies.campaign_section import CAMPAIGN_EVENT
from nba_service.policies.model import CampaignSpec
from nba_service.policies.snapshot import PolicySnapshot, _event_plan, _number, _offer_arrays

__all__ = ["CAMPAIGN_ORIGIN", "campaign_event", "campaign_snapshot"]

CAMPAIGN_ORIGIN = "campaign"
"""The origin channel of a campaign decision (``origin=campaign`` among its features)."""


def campaign_event(campaign: CampaignSpec) -> Event:
    """The synthetic moment a campaign's decisions are made for."""
    return Event(CAMPAIGN_EVENT, dict(campaign.event_fields))


def campaign_snapshot(
    snapshot: PolicySnapshot, campaign: CampaignSpec, closed: Collection[str] = ()
) -> PolicySnapshot | None:
    """``snapshot`` with the plan of the ``campaign`` event: the campaign's live offers on their outbound
    channels not in ``closed``. None when no offer has a channel left (nothing can be sent)."""
    policy = snapshot.policy
    numbers = _number(policy)
    outbound = {c.id for c in numbers.channels if c.direction == "outbound"} - set(closed)
    offers = tuple(
        dataclasses.replace(o, channels=tuple(c for c in o.channels if c in outbound)) for o in numbers.offers
    )
    wanted = set(campaign.offers)
    candidates = [i for i, o in enumerate(offers) if o.id in wanted and o.channels]
    if not candidates:
        return None
    arrays = _offer_arrays(numbers, policy.settings)
    plan = _event_plan(CAMPAIGN_EVENT, candidates, dataclasses.replace(numbers, offers=offers), arrays)
    return dataclasses.replace(snapshot, plans={**snapshot.plans, CAMPAIGN_EVENT: plan}, channel_defer_weight=())
