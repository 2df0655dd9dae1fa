"""The configuration reference, docs/configuration.md, rendered from ``Settings``.

The descriptions live on the fields in ``imgaudit/config.py``; this module only lays them out, so the
reference cannot drift from the code. ``scripts/gen-config-docs.py`` writes the file, and
``tests/project/test_docs.py`` fails when the committed file differs from ``render()``.
"""

from __future__ import annotations

import inspect
import re
import types
from pathlib import Path
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from imgaudit.config import Settings

GENERATOR = "scripts/gen-config-docs.py"

# Defaults that depend on the machine or the current directory, shown as what they mean instead.
_SHOWN_DEFAULTS = {"data_dir": "per-user data directory (see above)"}

_INTRO = """\
# Configuration

<!-- Generated from imgaudit/config.py by `python {generator}`; edit the field descriptions there. -->

One TOML file plus `IMGAUDIT_*` environment overrides (nested groups with `__`, e.g.
`IMGAUDIT_DEDUP__EMBED_DUPLICATE=0.9`), validated at start-up: a misspelt key or a bad value is a
one-line error. The file is `--config FILE`, else `$IMGAUDIT_CONFIG`, else `./imgaudit.toml` if
present. Environment beats file; `imgaudit config show` prints the result as TOML (unset values as
`# key: not set` comments; `null` with `--json`), headed by the file it read, the data directory and
the database in use (passwords hidden).

`data_dir`, when set nowhere, is the per-user data directory (`platformdirs`: `~/.local/share/imgaudit`
on Linux, `$XDG_DATA_HOME/imgaudit` when that is set), whatever the current directory. For
compatibility with earlier versions, whose default was `./data`, a `./data` that already holds
`imgaudit.db` is used instead; set `data_dir` (or `IMGAUDIT_DATA_DIR`) to stop depending on where a
command runs. `config show` and `stats` say which applied.

```toml
data_dir = "/var/lib/imgaudit"
[fetch]
cdn_base = "https://cdn.example.com/"
concurrency = 20
[dedup]
embed_duplicate = 0.92
```

Every setting below gives its dotted key (the TOML table and key), its type and allowed range, its
default, the environment variable that overrides it, and what it does.
"""


def render() -> str:
    """The whole of docs/configuration.md."""
    parts = [_INTRO.format(generator=GENERATOR)]
    for title, doc, rows in _sections(Settings):
        parts.append(f"\n## {title}\n")
        if doc:
            parts.append(f"\n{doc}\n")
        if rows:
            parts.append(
                "\n| setting | type | default | environment variable | description |\n|---|---|---|---|---|\n"
            )
            parts += [f"| {' | '.join(_cell(c) for c in row)} |\n" for row in rows]
    return "".join(parts)


Section = tuple[str, str, list[list[str]]]


def _sections(model: type[BaseModel], prefix: str = "") -> list[Section]:
    """One section per settings group, the group's own settings first, then its subgroups'."""
    rows: list[list[str]] = []
    nested: list[Section] = []
    for name, field in model.model_fields.items():
        key = prefix + name
        group = field.annotation
        if isinstance(group, type) and issubclass(group, BaseModel):
            nested += _sections(group, key + ".")
        else:
            rows.append(
                [
                    f"`{key}`",
                    _type(field),
                    _default(key, field),
                    f"`{_env_var(key)}`",
                    field.description or "",
                ]
            )
    if not prefix:
        return [("Top level", "", rows), *nested]
    return [(f"`[{prefix.rstrip('.')}]`", _doc(model), rows), *nested]


def _doc(model: type[BaseModel]) -> str:
    """The group's docstring, without the reST markup."""
    return re.sub(r"``([^`]+)``", r"`\1`", inspect.cleandoc(model.__doc__ or ""))


def _env_var(key: str) -> str:
    return "IMGAUDIT_" + key.upper().replace(".", "__")


_BOUNDS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"))
_CONSTRAINTS = ("pattern", "min_length", "max_length", *(attr for attr, _ in _BOUNDS))


def _type(field: FieldInfo) -> str:
    """The type, then the choices its pattern allows and the limits its constraints set."""
    extra = []
    found = {a: v for m in field.metadata for a in _CONSTRAINTS if (v := getattr(m, a, None)) is not None}
    if pattern := found.get("pattern"):
        choices = re.fullmatch(r"\^\(([^()]*)\)\$", pattern)
        if choices:
            extra.append("one of " + ", ".join(f"`{c}`" if c else '`""`' for c in choices[1].split("|")))
        else:
            extra.append(f"matching `{pattern}`")
    extra += [f"{sign} {_toml(found[attr])}" for attr, sign in _BOUNDS if attr in found]
    shortest, longest = found.get("min_length"), found.get("max_length")
    if shortest is not None and shortest == longest:
        extra.append(f"length {shortest}")
    else:
        if shortest is not None:
            extra.append(f"length ≥ {shortest}")
        if longest is not None:
            extra.append(f"length ≤ {longest}")
    return ", ".join([_type_name(field.annotation), *extra])


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " (optional)"
    if origin is not None:
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in get_args(annotation))}]"
    if annotation is Any:
        return "any"
    if annotation is SecretStr:
        return "secret str"
    if annotation is Path:
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def _default(key: str, field: FieldInfo) -> str:
    if key in _SHOWN_DEFAULTS:
        return _SHOWN_DEFAULTS[key]
    value = field.get_default(call_default_factory=True, validated_data={})
    if value is None:
        return "not set"
    return f"`{_toml(value)}`"


def _toml(value: Any) -> str:
    """A default written the way it would be written in imgaudit.toml."""
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}" if value else "{}"
    raise TypeError(f"no TOML spelling for {value!r}")


def _cell(text: str) -> str:
    """Table-safe: a literal | would split the cell, and * (``*.example.com``, ``2**attempt``) would start
    emphasis; both are kept literal."""
    return text.replace("|", "\\|").replace("*", "\\*").replace("\n", " ")
