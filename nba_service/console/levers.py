"""The levers of a policy set as form fields, and a change of them written as a new policy set.

A lever is one number of the policy files a marketer tunes without touching the rules: the no-action
threshold, the global and category levers, each offer's business weight, the ``max`` of every contact
limit (overall and per offer) and of every offer budget. :func:`levers_of` lists them with where they are
written; :func:`apply_changes` writes new values into the YAML *text* of the files, at the value's place
(comments and layout stay as they were; a key the file leaves out, such as an offer without ``weight``, is
added to its mapping). The result is validated as any publish is (:func:`propose`), and each problem of the
validation is shown at the field whose value is on the line it names.

>>> print(write_value("settings:\\n  no_action_threshold: 0.05  # be selective\\n", "s.yaml",
...                   ("settings", "no_action_threshold"), "0.1"), end="")
settings:
  no_action_threshold: 0.1  # be selective
>>> offers = "offers:\\n  - id: a\\n    category: c\\n    value: 1\\n"
>>> print(write_value(offers, "o.yaml", ("offers", 0, "weight"), "2.0"), end="")
offers:
  - weight: 2.0
    id: a
    category: c
    value: 1
>>> print(write_value("settings: {}\\n", "s.yaml", ("settings", "levers", "categories", "c"), "1.5"), end="")
settings: {levers: {categories: {c: 1.5}}}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import yaml

from nba_service.policies.model import PolicySet, PolicyValidationError
from nba_service.policies.parser import parse_policy_files

__all__ = ["Lever", "LeverError", "Proposal", "apply_changes", "levers_of", "propose", "show_number", "write_value"]

Path = tuple[str | int, ...]
"""Keys and list positions from a file's root to a value: ``("offers", 3, "weight")``."""


class LeverError(ValueError):
    """A lever that cannot be written (unknown, or its place is not a YAML mapping)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Lever:
    key: str
    """The form field: ``threshold``, ``global``, ``cat:lending``, ``weight:micro_loan``, ``limit:2``,
    ``olimit:micro_loan:0``, ``budget:credit_line_raise``."""
    group: str
    """``settings``, ``categories``, ``offers``, ``limits``."""
    label: str
    value: float | int
    integer: bool
    """A whole number (a ``max``); else any number >= 0."""
    file: str
    path: Path


def levers_of(policy: PolicySet) -> list[Lever]:
    """Every lever of ``policy``, in form order, with the file and path where it is (or would be) written."""
    settings_file = _section_file(policy.files, "settings")
    s = policy.settings
    levers = [
        Lever("threshold", "settings", "no-action threshold", s.no_action_threshold, False, settings_file,
              ("settings", "no_action_threshold")),
        Lever("global", "settings", "global lever", s.global_lever, False, settings_file,
              ("settings", "levers", "global")),
    ]  # fmt: skip
    categories = sorted({o.category for o in policy.offers})
    for category in categories:
        levers.append(
            Lever(
                f"cat:{category}",
                "categories",
                category,
                s.category_levers.get(category, 1.0),
                False,
                settings_file,
                ("settings", "levers", "categories", category),
            )
        )
    for i, limit in enumerate(s.contact_limits):
        levers.append(
            Lever(f"limit:{i}", "limits", limit.describe(), limit.max, True, settings_file,
                  ("settings", "contact_limits", i, "max"))
        )  # fmt: skip
    positions = _offer_positions(policy.files)
    for offer in policy.offers:
        file, index = positions[offer.id]
        base: Path = ("offers", index)
        levers.append(Lever(f"weight:{offer.id}", "offers", f"{offer.id} weight", offer.weight, False, file,
                            (*base, "weight")))  # fmt: skip
        for i, limit in enumerate(offer.limits):
            levers.append(
                Lever(f"olimit:{offer.id}:{i}", "limits", f"{offer.id}: {limit.describe()}", limit.max, True, file,
                      (*base, "limits", i, "max"))
            )  # fmt: skip
        if offer.budget is not None:
            levers.append(
                Lever(f"budget:{offer.id}", "limits", f"{offer.id}: budget per {offer.budget.per}", offer.budget.max,
                      True, file, (*base, "budget", "max"))
            )  # fmt: skip
    return levers


def show_number(value: float | int) -> str:
    """A lever's value as the form shows it: ``1.2``, ``2``, ``0.05``."""
    if isinstance(value, int):
        return str(value)
    return f"{value:.10f}".rstrip("0").rstrip(".") if math.isfinite(value) else str(value)


def _yaml_number(value: float | int) -> str:
    """A number as YAML reads it back as a number (PyYAML wants a dot in a float, and no bare exponent)."""
    if isinstance(value, int):
        return str(value)
    text = f"{value:.10f}".rstrip("0")
    return text + "0" if text.endswith(".") else text


@dataclasses.dataclass(slots=True)
class Proposal:
    """A change of levers: the values read from the form, the new files and what validation said."""

    values: dict[str, str]
    """Field -> the text entered (every lever, changed or not)."""
    changed: dict[str, float | int] = dataclasses.field(default_factory=dict)
    field_errors: dict[str, str] = dataclasses.field(default_factory=dict)
    other_errors: list[str] = dataclasses.field(default_factory=list)
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    policy: PolicySet | None = None

    @property
    def ok(self) -> bool:
        return not self.field_errors and not self.other_errors and self.policy is not None


def propose(live: PolicySet, form: Mapping[str, str], levers: Sequence[Lever] | None = None) -> Proposal:
    """The live policy set with the levers of ``form`` (field -> text; fields left out keep their value),
    validated as a publish is. Nothing is written anywhere. ``levers``: those of ``live``, when known."""
    if levers is None:
        levers = levers_of(live)
    proposal = Proposal({lever.key: show_number(lever.value) for lever in levers})
    for lever in levers:
        if lever.key not in form:
            continue
        text = str(form[lever.key]).strip()
        proposal.values[lever.key] = text
        number = _parse(text, lever)
        if isinstance(number, str):
            proposal.field_errors[lever.key] = number
        elif number != lever.value:
            proposal.changed[lever.key] = number
    if proposal.field_errors:
        return proposal
    if not proposal.changed:  # the live set as it is: valid, nothing to parse again
        proposal.files, proposal.policy = dict(live.files), live
        return proposal
    by_key = {lever.key: lever for lever in levers}
    try:
        proposal.files = apply_changes(live.files, proposal.changed, levers)
    except LeverError as exc:
        proposal.other_errors.append(str(exc))
        return proposal
    try:
        proposal.policy = parse_policy_files(proposal.files)
    except PolicyValidationError as exc:
        lines = {_value_line(proposal.files, by_key[key]): key for key in proposal.changed}
        for issue in exc.issues:
            key = lines.get((issue.file, issue.line))
            if key is not None and key not in proposal.field_errors:
                proposal.field_errors[key] = issue.message
            else:
                proposal.other_errors.append(str(issue))
    return proposal


def _parse(text: str, lever: Lever) -> float | int | str:
    """The number of a field, or why it is not one (the message shown at the field)."""
    if not text:
        return "required: a number"
    try:
        number = float(text)
    except ValueError:
        return f"{text!r} is not a number"
    if not math.isfinite(number) or number < 0:
        return f"{text}: must be a number >= 0"
    if lever.integer:
        if number != int(number):
            return f"{text}: must be a whole number"
        return int(number)
    return number


def apply_changes(
    files: Mapping[str, str], changes: Mapping[str, float | int | str], levers: Sequence[Lever] | None = None
) -> dict[str, str]:
    """``files`` with each lever of ``changes`` (field -> number) written at its place in the YAML text."""
    if levers is None:
        levers = levers_of(parse_policy_files(files))
    by_key = {lever.key: lever for lever in levers}
    out = dict(files)
    for key, value in changes.items():
        lever = by_key.get(key)
        if lever is None:
            raise LeverError(f"{key}: no such lever")
        number = float(value) if not lever.integer else int(float(value))
        if lever.file not in out:  # a policy set without a settings section: add one
            out[lever.file] = "settings: {}\n"
        out[lever.file] = write_value(out[lever.file], lever.file, lever.path, _yaml_number(number))
    return out


def write_value(text: str, file: str, path: Path, value: str) -> str:
    """``text`` with the scalar at ``path`` replaced by ``value``; missing mapping keys are added."""
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is None:
        raise LeverError(f"{file}: empty")
    for depth, step in enumerate(path):
        if isinstance(step, int):
            if not isinstance(node, yaml.SequenceNode) or step >= len(node.value):
                raise LeverError(f"{file}: {_show(path[: depth + 1])} not found")
            node = node.value[step]
            continue
        if not isinstance(node, yaml.MappingNode):
            raise LeverError(f"{file}:{node.start_mark.line + 1}: {_show(path[:depth])} is not a mapping")
        found = next((v for k, v in node.value if k.value == step), None)
        if found is None:
            return _insert(text, node, _nested(path[depth:], value))
        node = found
    if not isinstance(node, yaml.ScalarNode):
        raise LeverError(f"{file}:{node.start_mark.line + 1}: {_show(path)} is not a number")
    return text[: node.start_mark.index] + value + text[node.end_mark.index :]


def _nested(path: Path, value: str) -> str:
    """``a: {b: {c: 1}}`` for the path (a, b, c) below a mapping that lacks ``a``."""
    text = value
    for step in reversed(path[1:]):
        text = f"{{{step}: {text}}}"
    return f"{path[0]}: {text}"


def _insert(text: str, mapping: yaml.MappingNode, entry: str) -> str:
    """``text`` with ``entry`` (``key: value``) added as the first entry of ``mapping``."""
    if not mapping.value:  # {} : only a flow mapping is empty
        at = mapping.start_mark.index + 1
        return text[:at] + entry + text[at:]
    first = mapping.value[0][0]
    at = first.start_mark.index
    if mapping.flow_style:
        return text[:at] + entry + ", " + text[at:]
    return text[:at] + entry + "\n" + " " * first.start_mark.column + text[at:]


def _value_line(files: Mapping[str, str], lever: Lever) -> tuple[str, int]:
    """(file, 1-based line) where ``lever``'s value is written in ``files``."""
    node = yaml.compose(files[lever.file], Loader=yaml.SafeLoader)
    for step in lever.path:
        if isinstance(step, int) and isinstance(node, yaml.SequenceNode) and step < len(node.value):
            node = node.value[step]
        elif isinstance(node, yaml.MappingNode):
            found = next((v for k, v in node.value if k.value == step), None)
            if found is None:
                break
            node = found
        else:
            break
    return lever.file, node.start_mark.line + 1 if node is not None else 0


def _show(path: Path) -> str:
    return ".".join(str(step) for step in path) or "the file"


def _section_file(files: Mapping[str, str], section: str) -> str:
    """The file whose root mapping holds ``section`` (``settings.yaml`` when none does)."""
    for name in sorted(files):
        root = yaml.compose(files[name], Loader=yaml.SafeLoader)
        if isinstance(root, yaml.MappingNode) and any(k.value == section for k, _ in root.value):
            return name
    return "settings.yaml"


def _offer_positions(files: Mapping[str, str]) -> dict[str, tuple[str, int]]:
    """Offer id -> (file, position in that file's ``offers`` list)."""
    positions: dict[str, tuple[str, int]] = {}
    for name in sorted(files):
        root = yaml.compose(files[name], Loader=yaml.SafeLoader)
        if not isinstance(root, yaml.MappingNode):
            continue
        offers = next((v for k, v in root.value if k.value == "offers"), None)
        if not isinstance(offers, yaml.SequenceNode):
            continue
        for index, node in enumerate(offers.value):
            if isinstance(node, yaml.MappingNode):
                ident = next((v.value for k, v in node.value if k.value == "id"), None)
                if isinstance(ident, str):
                    positions[ident] = (name, index)
    return positions
