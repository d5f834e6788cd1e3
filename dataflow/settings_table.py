"""Settings as data: each setting is declared once, and everything else is derived from it.

A job declares its settings as the fields of a frozen dataclass, each made with :func:`setting`:
the environment variable, the Sunbird HOCON key where there is one, the default as a user would
write it, the parser (with its bounds), whether it is a secret, and one line of help. From that
one declaration come the dataclass default, :func:`load_fields`, :func:`describe` (secrets
masked), the ``--help`` text (:func:`help_lines`) and the Markdown tables of the README and
docs/exhaust.md (:mod:`dataflow.settings_docs`). An empty variable counts as unset, as in a
Kubernetes ConfigMap that lists every setting.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

# (name to blame in errors, raw text) -> value; raises ConfigError naming the setting.
Parser = Callable[[str, str], Any]
_META = "setting"


class ConfigError(ValueError):
    """A setting has a bad value; the message names the setting."""


@dataclass(frozen=True)
class Setting:
    var: str  # the environment variable; a trailing * reads every variable with that prefix
    default: str  # as a user would write it; "" is unset; a str.format template if derived
    parse: Parser | None
    help: str  # one line, Markdown
    hocon: str | None = None  # Sunbird's key in the PUI_CONFIG file
    secret: bool = False
    aliases: tuple[str, ...] = ()  # old names, read when var is unset
    derived: bool = False  # default is formatted with the settings declared before it
    shown_default: str | None = None  # Markdown of the docs' default cell, when not the text
    mask: Callable[[Any], Any] | None = None  # what describe() prints instead of the value

    @property
    def prefix(self) -> str | None:
        return self.var[:-1] if self.var.endswith("*") else None

    def masked(self, value: Any) -> Any:
        if self.mask is not None:
            return self.mask(value)
        if self.secret:
            return "***" if value else None
        return value

    def row(self) -> tuple[str, str, str]:
        """(variable, default, meaning) as Markdown table cells."""
        if self.shown_default is not None:
            default = self.shown_default
        else:
            default = f"`{self.default}`" if self.default and not self.secret else ""
        meaning = self.help
        if self.aliases:
            old = ", ".join(f"`{a}`" for a in self.aliases)
            meaning += f"; {old} is its old name and still works"
        if self.secret:
            meaning += " (secret: never printed or logged)"
        return f"`{self.var}`", default, meaning


def setting(var: str, default: str, parse: Parser, help: str, **options: Any) -> Any:
    """A dataclass field declared by its :class:`Setting`; its default is the parsed text."""
    spec = Setting(var, default, parse, help, **options)
    if spec.derived:
        # Filled by fill_derived() once the settings it is made from are known.
        return field(default="", metadata={_META: spec})
    return field(default=parse(var, default), repr=not spec.secret, metadata={_META: spec})


def documented(var: str, help: str, *, mask: Callable[[Any], Any] | None = None) -> Any:
    """A field read by the job's own code (a prefix of variables), documented like the rest."""
    spec = Setting(var, "", None, help, mask=mask)
    return field(default_factory=dict, repr=False, metadata={_META: spec})


def specs(cls: Any) -> list[tuple[str, Setting]]:
    """(attribute, Setting) of every declared field, in declaration order."""
    return [(f.name, f.metadata[_META]) for f in fields(cls) if _META in f.metadata]


def variables(cls: Any) -> tuple[str, ...]:
    """Every environment variable the class reads by name (with old names, without prefixes)."""
    return tuple(n for _, s in specs(cls) if s.prefix is None for n in (s.var, *s.aliases))


def secrets(cls: Any) -> tuple[str, ...]:
    return tuple(s.var for _, s in specs(cls) if s.secret)


def hocon_keys(cls: Any) -> dict[str, str]:
    """Sunbird's HOCON key -> the environment variable it stands for."""
    return {s.hocon: s.var for _, s in specs(cls) if s.hocon}


def fill_derived(obj: Any) -> None:
    """For __post_init__: give derived settings left empty their default (e.g. the topic
    names made from PUI_ENV), so that the class built without arguments is what load() gives
    for an empty environment."""
    for attr, spec in specs(type(obj)):
        if spec.derived and getattr(obj, attr) == "":
            raw = spec.default.format_map({a: getattr(obj, a) for a, _ in specs(type(obj))})
            object.__setattr__(obj, attr, spec.parse(spec.var, raw))


def load_fields(
    cls: Any, env: Mapping[str, str], file_values: Mapping[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Parse every declared setting of ``cls``: the variable (or an old name) when set and not
    empty, else the HOCON key from ``file_values``, else the default.

    Returns the values by attribute and, by attribute, the name an error about that value must
    blame (the variable, or ``<hocon key> (in PUI_CONFIG)``)."""
    file_values = file_values or {}
    values: dict[str, Any] = {}
    blame: dict[str, str] = {}
    for attr, spec in specs(cls):
        if spec.prefix is not None:
            continue  # the job's own code reads prefixed variables
        name, raw = spec.var, None
        for candidate in (spec.var, *spec.aliases):
            if env.get(candidate, "") != "":
                name, raw = candidate, env[candidate]
                break
        if raw is None and spec.hocon and spec.hocon in file_values:
            name, raw = f"{spec.hocon} (in PUI_CONFIG)", file_values[spec.hocon]
        if raw is None:
            raw = spec.default.format_map(values) if spec.derived else spec.default
        assert spec.parse is not None
        values[attr] = spec.parse(name, raw)
        blame[attr] = name
    return values, blame


def read_hocon(path: str, keys: Iterable[str]) -> dict[str, str]:
    """The values of ``keys`` found in the HOCON file ``path`` (lists joined with commas); other
    keys are ignored."""
    try:
        from pyhocon import ConfigFactory
    except ImportError as exc:  # pragma: no cover - pyhocon is a pinned dependency
        raise ConfigError("PUI_CONFIG needs the pyhocon package") from exc
    import os

    if not os.path.isfile(path):
        raise ConfigError(f"PUI_CONFIG points to {path!r}, which is not a readable file")
    try:
        tree = ConfigFactory.parse_file(path)
    except Exception as exc:
        raise ConfigError(f"PUI_CONFIG file {path!r} is not valid HOCON: {exc}") from None
    found: dict[str, str] = {}
    for key in keys:
        value = tree.get(key, None)
        if value is not None:
            if isinstance(value, list):
                value = ",".join(str(v) for v in value)
            found[key] = str(value)
    return found


def describe(obj: Any, prefix: str = "") -> str:
    """One line per declared setting, secrets masked: safe to print and log."""
    return "\n".join(
        f"{prefix}{attr}={spec.masked(getattr(obj, attr))}" for attr, spec in specs(type(obj))
    )


def plain(markdown: str) -> str:
    """The help text for a terminal: no backticks, links as ``text (target)``."""
    text = re.sub(r"\[([^\]]+)\]\(([^)]+)\)", r"\1 (\2)", markdown)
    return text.replace("`", "")


def _fill(text: str, width: int, indent: str) -> str:
    # Setting and key names hold hyphens: never break a line inside one.
    return textwrap.fill(
        text, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False
    )


def wrap(text: str, width: int = 100) -> str:
    return _fill(text, width, "")


def help_lines(rows: Iterable[tuple[str, str, str]], width: int = 100) -> str:
    """``--help`` text of Markdown rows (variable, default, meaning)."""
    out = []
    for var, default, meaning in rows:
        head = plain(var) + (f" (default: {plain(default)})" if default else "")
        out.append(_fill(head, width, "  "))
        out.append(_fill(plain(meaning), width, " " * 6))
    return "\n".join(out)


# --- parsers: each returns a (name, raw) -> value function ------------------------------------


def shown(value: object, limit: int = 60) -> str:
    """A value for an error message: quoted if text, and clipped, since a hostile or mistaken
    value may be any length."""
    text = value if isinstance(value, str) else str(value)
    more = "..." if len(text) > limit else ""
    return (repr(text[:limit]) if isinstance(value, str) else text[:limit]) + more


def text(name: str, raw: str) -> str:
    return raw


def optional(name: str, raw: str) -> str | None:
    return raw or None


def boolean(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"{name} must be true or false, not {shown(raw)}")


def integer(low: int, high: int) -> Parser:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{name} must be an integer, not {shown(raw)}") from None
        if not low <= value <= high:
            raise ConfigError(f"{name} must be between {low} and {high}, not {shown(value)}")
        return value

    return parse


def number(low: float, high: float | None = None) -> Parser:
    """A finite number of at least ``low`` (and at most ``high``): nan and inf are typos, and a
    nan would pass every comparison."""

    def parse(name: str, raw: str) -> float:
        try:
            value = float(str(raw).strip())
        except ValueError:
            raise ConfigError(f"{name} must be a number, not {shown(raw)}") from None
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be a finite number, not {shown(raw)}")
        if high is not None and not low <= value <= high:
            raise ConfigError(f"{name} must be between {low:g} and {high:g}, not {shown(raw)}")
        if value < low:
            raise ConfigError(f"{name} must be at least {low}, not {shown(value)}")
        return value

    return parse


def choice(options: Iterable[str], case: Callable[[str], str] = str.upper) -> Parser:
    """One of ``options``, compared after stripping and ``case`` (str.upper or str.lower)."""
    allowed = tuple(options)

    def parse(name: str, raw: str) -> str:
        value = case(raw.strip())
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {', '.join(allowed)}, not {shown(raw)}")
        return value

    return parse


def matching(pattern: str, what: str) -> Parser:
    """Text that matches ``pattern`` whole; ``what`` completes "<name> must be ..."."""
    compiled = re.compile(pattern)

    def parse(name: str, raw: str) -> str:
        if not compiled.fullmatch(raw):
            raise ConfigError(f"{name} must be {what}, not {shown(raw)}")
        return raw

    return parse
