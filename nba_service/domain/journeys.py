"""How a moment changes what the customer has open: one rule, kept by the store and by the preview.

An abandoned cart opens a cart journey (keyed by its ``cart_id``); a purchase
or checkout (custom events) closes the cart named by its ``cart_id``
attribute, or every open cart when it names none. The same rule applies to a
moment that is decided (``Decide``) and to one only recorded (``RecordEvent``).

A custom event ``product_opened`` with attribute ``product`` adds that
product to the customer's holdings (:func:`opened_product`): with the journey
entry, in one script, for ``RecordEvent``; right after the decision is
recorded, for ``Decide``.

>>> open_journey_change(Event("cart_abandon", {"cart_id": "k1", "cart_value": 80.0}))
OpenJourneyChange(op='set', key=('cart', 'k1'))
>>> open_journey_change(Event("custom", {"name": "purchase"}, {"cart_id": "k1"}))
OpenJourneyChange(op='del', key=('cart', 'k1'))
>>> open_journey_change(Event("custom", {"name": "purchase"})).op
'clear'
>>> open_journey_change(Event("app_open", {"screen": "home"})) is None
True
>>> opened_product(Event("custom", {"name": "product_opened"}, {"product": "overdraft_protection"}))
'overdraft_protection'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from nba_service.domain.objects import Event

__all__ = [
    "CLOSING_EVENTS",
    "PRODUCT_ATTRIBUTE",
    "PRODUCT_OPENED",
    "OpenJourneyChange",
    "cart_journey_id",
    "journey_fields",
    "open_journey_change",
    "opened_product",
]

CLOSING_EVENTS = frozenset({"purchase", "checkout"})
"""Custom events that close the customer's open cart (``cart_id`` attribute, or every cart)."""
PRODUCT_OPENED = "product_opened"
"""The custom event that adds a product to the customer's holdings."""
PRODUCT_ATTRIBUTE = "product"
"""The attribute of a ``product_opened`` event naming the product (a product id, as offers' ``product``)."""


class OpenJourneyChange(NamedTuple):
    op: Literal["set", "del", "clear"]
    """``set``: open (or refresh) ``key``; ``del``: close it; ``clear``: close every journey of its kind."""
    key: tuple[str, str]
    """(kind, id); the id is empty for ``clear``."""


def cart_journey_id(cart_id: Any) -> str:
    """The id of the open cart journey an abandoned cart with ``cart_id`` opens (``cart`` for one without).

    >>> cart_journey_id("k1"), cart_journey_id("")
    ('k1', 'cart')
    """
    return str(cart_id or "cart")


def open_journey_change(event: Event) -> OpenJourneyChange | None:
    """What ``event`` opens or closes; None when it changes nothing."""
    if event.type == "cart_abandon":
        return OpenJourneyChange("set", ("cart", cart_journey_id(event.fields.get("cart_id"))))
    if event.type == "custom" and event.fields.get("name") in CLOSING_EVENTS:
        cart_id = event.attributes.get("cart_id")
        return OpenJourneyChange("del", ("cart", cart_id)) if cart_id else OpenJourneyChange("clear", ("cart", ""))
    return None


def opened_product(event: Event) -> str | None:
    """The product ``event`` adds to the customer's holdings: a ``product_opened`` custom event's ``product``
    attribute (the API refuses one without it); None for every other event."""
    if event.type == "custom" and event.fields.get("name") == PRODUCT_OPENED:
        return event.attributes.get(PRODUCT_ATTRIBUTE) or None
    return None


def journey_fields(event: Event) -> Mapping[str, Any]:
    """The fields a journey entry (and an open journey) keeps of ``event``: its fields, its attributes under
    ``attributes`` and a cart's items under ``item_ids``.

    >>> journey_fields(Event("cart_abandon", {"cart_id": "k1", "item_count": 2}, item_ids=("sku1", "sku2")))
    {'cart_id': 'k1', 'item_count': 2, 'item_ids': ['sku1', 'sku2']}
    """
    if not event.attributes and not event.item_ids:
        return event.fields
    fields = dict(event.fields)
    if event.attributes:
        fields["attributes"] = dict(event.attributes)
    if event.item_ids:
        fields["item_ids"] = list(event.item_ids)
    return fields
