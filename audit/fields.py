from __future__ import annotations

from typing import Any

import orjson
from django.db import models

from audit.chain import canonical_json


class CanonicalJSONField(models.TextField):  # type: ignore[type-arg]
    """A JSON object stored as its canonical text (keys sorted, no whitespace): the exact bytes the
    audit hash covers, so no database can reformat them (jsonb would reorder keys and rewrite
    numbers). Python sees the decoded value. Filters work on the text (`details__contains`), not
    on JSON keys."""

    def from_db_value(self, value: Any, expression: Any, connection: Any) -> Any:
        return None if value is None else orjson.loads(value)

    def to_python(self, value: Any) -> Any:
        if isinstance(value, str):
            try:
                return orjson.loads(value)
            except orjson.JSONDecodeError:
                return value
        return value

    def get_prep_value(self, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value  # text for lookups, or already canonical
        return canonical_json(value)

    def value_to_string(self, obj: Any) -> str:
        return str(self.get_prep_value(self.value_from_object(obj)))
