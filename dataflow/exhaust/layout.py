"""The report's layout from a model config in Sunbird's format (labels, order, sort, quoting).

The default is the seed's ``program-user-exhaust`` model config, shipped as
``default_model.json``; ``PUI_EXHAUST_MODEL_CONFIG`` points at another file of the same shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from dataflow.schema import TABLE

# The fields a report row can carry, by their model-config names. The personal ones are
# shown only with consent, and left out when no user of the report needs consent.
PERSONAL_COLUMNS = ("username", "phone", "email", "consentflag", "consentprovideddate")
# user_id first: a report row holds it before the others (report.py USER).
ROW_FIELDS = ("user_id", *(c.spelled for c in TABLE if c.report and c.name != "user_id"))


class LayoutError(ValueError):
    pass


@dataclass(frozen=True)
class Layout:
    """Which field each CSV column shows, in file order, and how rows are sorted and quoted."""

    columns: tuple[tuple[str, str], ...]  # (label, field)
    sort: tuple[str, ...]  # fields
    quoted: frozenset[str]  # fields
    location_keys: tuple[str, ...]

    def without_pii(self) -> Layout:
        return Layout(
            tuple((label, f) for label, f in self.columns if f not in PERSONAL_COLUMNS),
            tuple(f for f in self.sort if f not in PERSONAL_COLUMNS),
            self.quoted,
            self.location_keys,
        )


def load(path: str | None = None) -> Layout:
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise LayoutError(f"PUI_EXHAUST_MODEL_CONFIG: cannot read {path}: {exc}") from None
    else:
        text = resources.files(__package__).joinpath("default_model.json").read_text("utf-8")
    try:
        model = json.loads(text)
    except ValueError as exc:
        raise LayoutError(f"PUI_EXHAUST_MODEL_CONFIG is not JSON: {exc}") from None
    params = model.get("modelParams", model)
    try:
        labels: dict[str, str] = params["label_mapping"]
        order: list[str] = params["order_of_csv_column"]
    except (KeyError, TypeError):
        raise LayoutError(
            "the model config needs modelParams.label_mapping and modelParams.order_of_csv_column"
        ) from None
    locations: list[str] = []
    for table in params.get("table", []):
        if table.get("name") == "program_enrollment":
            locations = list(table.get("user_locations_columns", []))
    field_of = {label: field for field, label in labels.items()}
    known = set(PERSONAL_COLUMNS) | set(ROW_FIELDS) | set(locations)
    columns = []
    for label in order:
        field = field_of.get(label)
        if field is None or field not in known:
            raise LayoutError(f"the model config's column {label!r} maps to no known field")
        columns.append((label, field))
    for label in [*params.get("sort", []), *params.get("quote_column", [])]:
        if label not in field_of:
            raise LayoutError(f"the model config names an unknown column {label!r}")
    return Layout(
        tuple(columns),
        tuple(field_of[label] for label in params.get("sort", [])),
        frozenset(field_of[label] for label in params.get("quote_column", [])),
        tuple(locations),
    )
