"""Component references and their validation: ``{"type": "<registry name>", ...parameters}``.

A :class:`ComponentSpec` names a registered component and carries its parameters; the component's
own pydantic config class validates them (:func:`validate_params`). Errors are collected into one
:class:`ConfigError` whose lines name the path of each bad field and, for a typo, the closest
valid name. Nothing is ever imported from a config: ``type`` is looked up in the plugin registry.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["ComponentSpec", "ConfigError", "problems", "validate_params"]


class ConfigError(ValueError):
    """Invalid configuration; ``problems`` holds ``(path, message)`` pairs.

    One problem reads as one line (the command line prints errors on one line); several as a
    header and a line each, so one pass shows every typo.
    """

    def __init__(self, problems: Sequence[tuple[str, str]], source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        lines = [f"{path}: {msg}" if path else msg for path, msg in self.problems]
        if len(lines) == 1:
            super().__init__(f"invalid configuration{where}: {lines[0]}")
        else:
            super().__init__(f"invalid configuration{where}:\n" + "\n".join(f"  {line}" for line in lines))


class ComponentSpec(BaseModel):
    """A reference to a registered component: its registry name plus parameters."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="Registry name: full ('plugin/name') or a unique short name.")

    @property
    def params(self) -> dict[str, Any]:
        """The component's parameters (everything but ``type``)."""
        return dict(self.model_extra or {})

    @classmethod
    def coerce(cls, value: Any) -> ComponentSpec:
        """Accept a ComponentSpec, a mapping with ``type``, or a bare name."""
        if isinstance(value, ComponentSpec):
            return value
        if isinstance(value, str):
            return cls(type=value)
        if isinstance(value, Mapping):
            if "type" not in value:
                raise ConfigError([("type", "missing: name the component, e.g. {'type': 'unet', ...}")])
            return cls(**value)
        raise TypeError(f"expected a component name or mapping with 'type', got {value!r}")


def problems(
    exc: ValidationError, model: type[BaseModel] | None, prefix: tuple[str, ...]
) -> list[tuple[str, str]]:
    """``(path, message)`` pairs of a pydantic error, with did-you-mean hints for unknown fields.

    ``model`` is the class that was validated (for the valid names), ``prefix`` the path to it.
    """
    out = []
    for err in exc.errors(include_url=False):
        loc = prefix + tuple(str(p) for p in err["loc"])
        path = ".".join(loc)
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
            valid = _field_names(model, tuple(str(p) for p in err["loc"][:-1]))
            close = difflib.get_close_matches(str(err["loc"][-1]), valid, n=1, cutoff=0.6)
            msg += f"; did you mean {close[0]!r}?" if close else f"; valid fields: {', '.join(valid)}"
        else:
            msg = err["msg"]
            if err["type"] != "missing" and "input" in err:
                msg += f" (got {err['input']!r})"
        out.append((path, msg))
    return out


def _field_names(model: type[BaseModel] | None, loc: tuple[str, ...]) -> list[str]:
    """Field names of the (nested) model found at ``loc``, for suggestions."""
    for part in loc:
        if model is None or part not in model.model_fields:
            return []
        annotation = model.model_fields[part].annotation
        model = annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    return sorted(model.model_fields) if model is not None else []


def validate_params(
    config_class: type[BaseModel], params: Mapping[str, Any], path: Sequence[str] = ()
) -> BaseModel:
    """Validate ``params`` with a component's pydantic ``config_class``.

    Returns the config instance; raises ConfigError whose paths start with ``path``.
    """
    try:
        return config_class.model_validate(dict(params))
    except ValidationError as exc:
        raise ConfigError(problems(exc, config_class, tuple(path))) from None
