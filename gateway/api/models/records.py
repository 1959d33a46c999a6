"""The base of response models built from a state-database record.

``Model.model_validate(record)`` copies every field the model shares with the record
(pydantic's ``from_attributes``) and fills each ``<name>_iso`` field with the ISO 8601 twin
of ``<name>`` (the API's time convention, see :mod:`gateway.api.models`). A model whose
field is not a plain copy says how to derive it in :meth:`FromRecord.derived`; nothing
else is written by hand, so a field added to a model and its record needs no other edit.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationInfo, model_validator

from gateway.api.params import iso_or_none

__all__ = ["FromRecord"]


class _Twins:
    """The record as pydantic reads it: its own attributes, the ISO twins of its times and
    the model's derived fields."""

    __slots__ = ("_derived", "_record")

    def __init__(self, record: object, derived: dict[str, Any]) -> None:
        self._record = record
        self._derived = derived

    def __getattr__(self, name: str) -> Any:
        if name in self._derived:
            return self._derived[name]
        if name.endswith("_iso"):
            return iso_or_none(getattr(self._record, name.removesuffix("_iso")))
        return getattr(self._record, name)


class FromRecord(BaseModel):
    """A response model validated from a record's attributes (see the module docstring)."""

    model_config = ConfigDict(from_attributes=True)

    @classmethod
    def derived(cls, record: Any, context: dict[str, Any]) -> dict[str, Any]:
        """Fields that are not a copy of the record's attribute of the same name."""
        return {}

    @model_validator(mode="before")
    @classmethod
    def _from_record(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict | BaseModel):
            return data
        return _Twins(data, cls.derived(data, info.context or {}))
