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
    from_file: bool = False  # <var>_FILE, when var is unset, names a file holding the value

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
        if self.from_file:
            meaning += f"; or `{self.var}_FILE`, a file holding it (e.g. a mounted Secret)"
        if self.secret:
            meaning += " (secret: never printed or logged)"
        return f"`{self.var}`", default, meaning


def setting(var: str, default: str, parse: Parser, help: str, **options: Any) -> Any:
    """A dataclass field declared by its :class:`Setting`; its default is the parsed text."""
    spec = Setting(var, default, parse, help, **options)
    if spec.derived:
        # Filled by fill_derived() once the settings it is made from are known.
        return field(default="", metadata={_META: spec})
    # A masked value is not for repr() either (it may hold a password).
    shown_in_repr = not spec.secret and spec.mask is None
    return field(default=parse(var, default), repr=shown_in_repr, metadata={_META: spec})


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


def file_variables(cls: Any) -> tuple[str, ...]:
    """The ``<var>_FILE`` variables read when their setting is unset."""
    return tuple(f"{s.var}_FILE" for _, s in specs(cls) if s.from_file)


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
    """Parse every declared setting of ``cls``: the variable (or an old name, or the file its
    ``_FILE`` variable names) when set and not empty, else the HOCON key from ``file_values``,
    else the default.

    Returns the values by attribute and, by attribute, the name an error about that value must
    blame (the variable, or ``<hocon key> (in PUI_CONFIG)``)."""
    file_values = file_values or {}
    values: dict[str, Any] = {}
    blame: dict[str, str] = {}
    for attr, spec in specs(cls):
        if spec.prefix is not None:
            continue  # the job's own code reads prefixed variables
        found = lookup(spec, env)
        if found is None and spec.hocon and spec.hocon in file_values:
            found = f"{spec.hocon} (in PUI_CONFIG)", file_values[spec.hocon]
        if found is None:
            found = spec.var, spec.default.format_map(values) if spec.derived else spec.default
        name, raw = found
        assert spec.parse is not None
        values[attr] = spec.parse(name, raw)
        blame[attr] = name
    return values, blame


def lookup(spec: Setting, env: Mapping[str, str]) -> tuple[str, str] | None:
    """(name to blame, raw text) of the variable, an old name or the ``_FILE`` variable, the
    first one set and not empty; None when the environment leaves the setting unset."""
    for candidate in (spec.var, *spec.aliases):
        if env.get(candidate, "") != "":
            return candidate, env[candidate]
    file_var = f"{spec.var}_FILE"
    if spec.from_file and env.get(file_var, "") != "":
        return file_var, read_value_file(file_var, env[file_var])
    return None


def read_value_file(name: str, path: str) -> str:
    """The text of the file ``path`` names, without surrounding whitespace (the newline a
    Secret's file usually ends with)."""
    from pathlib import Path

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"{name}: cannot read {shown(path)} ({type(exc).__name__})") from None
    return text.strip()


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


def maybe(parse: Parser) -> Parser:
    """``parse`` for a setting that may be left unset: empty text is None."""

    def parse_or_none(name: str, raw: str) -> Any:
        return parse(name, raw) if raw else None

    return parse_or_none


# C0 and C1 controls and DEL: never part of a name, an address or a path, and in a log line or
# a terminal they can forge or hide text.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def has_control(text: str) -> bool:
    return _CONTROL.search(text) is not None


def printable(limit: int, what: str) -> Parser:
    """Text of 1 to ``limit`` visible ASCII characters (no space, no control character): names
    that are logged and handed to clients, where nothing else is ever needed."""
    return matching(rf"[\x21-\x7e]{{1,{limit}}}", f"{what} (1 to {limit} visible ASCII characters)")


def path_text(limit: int = 4096) -> Parser:
    """A file or folder name: any text but control characters (a NUL fails every system call
    later, with a stack trace), at most ``limit`` characters."""

    def parse(name: str, raw: str) -> str:
        if has_control(raw) or not 0 < len(raw) <= limit:
            raise ConfigError(
                f"{name} must be a path of 1 to {limit} characters without control "
                f"characters, not {shown(raw)}"
            )
        return raw

    return parse


# --- network addresses -------------------------------------------------------------------------

# A DNS label as resolvers take it: letters, digits, hyphens inside, and the underscores of
# Docker and Compose service names.
_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?", re.ASCII)
_DOTTED = re.compile(r"[0-9.]+", re.ASCII)
MAX_HOSTS = 100


class AddressError(ValueError):
    """Why one entry of a host list is refused: completes "<entry> ..."."""


def check_host(host: str, *, bare_ipv6: bool) -> str:
    """``host`` as given: a DNS name, an IPv4 address, an IPv6 address in brackets, or (with
    ``bare_ipv6``) without them."""
    import ipaddress

    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise AddressError("is not an IPv6 address in brackets") from None
        return host
    if ":" in host:
        if bare_ipv6:
            try:
                ipaddress.IPv6Address(host)
                return host
            except ValueError:
                pass
        raise AddressError("is not a host name, an IPv4 address or an IPv6 address in brackets")
    if _DOTTED.fullmatch(host):
        # All digits and dots is an IPv4 address, never a name: 10.0.0.300 is a typo.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise AddressError("is not an IPv4 address") from None
        return host
    if len(host) > 253 or not _HOSTNAME.fullmatch(host):
        raise AddressError("is not a host name (letters, digits, '-', '_' and '.')")
    return host


def check_port(text: str) -> int:
    if not (text.isascii() and text.isdigit() and 1 <= int(text) <= 65535):
        # librdkafka would wrap 99999 to 34463 and read "abc" as port 0, without a word.
        raise AddressError(f"has port {text!r}, not a number from 1 to 65535")
    return int(text)


def split_port(entry: str) -> tuple[str, str | None]:
    """(host, port text or None) of ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``; a
    text with two or more colons outside brackets is all host (a bare IPv6 address)."""
    if entry.startswith("["):
        close = entry.find("]")
        if close > 0 and entry[close + 1 :].startswith(":"):
            return entry[: close + 1], entry[close + 2 :]
        return entry, None
    if entry.count(":") == 1:
        host, port = entry.split(":")
        return host, port
    return entry, None


def address_list(name: str, raw: str, what: str) -> list[str]:
    """The stripped, non-empty entries of a comma-separated list, or a ConfigError: no control
    character anywhere, no empty entry, no space inside one, at most MAX_HOSTS."""
    text = raw.strip()  # a YAML block scalar ends with a newline
    if not text:
        raise ConfigError(f"{name} must list at least one {what}")
    if has_control(text):
        raise ConfigError(f"{name} must not contain control characters, not {shown(raw)}")
    entries = [e.strip(" ") for e in text.split(",")]
    if len(entries) > MAX_HOSTS:
        raise ConfigError(f"{name} must list at most {MAX_HOSTS} entries, not {len(entries)}")
    for entry in entries:
        if not entry:
            raise ConfigError(f"{name} has an empty entry (two commas, or one at an end)")
        if any(c.isspace() for c in entry):
            raise ConfigError(f"{name}: {what} {shown(entry)} contains a space")
    return entries
