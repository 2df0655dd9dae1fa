"""``imgaudit config show``: the effective settings, and where they came from."""

from __future__ import annotations

import json
import re
from typing import Any

import tomli_w

from imgaudit.cli.common import App, ConfigOpt, JsonOpt, command_settings, emit
from imgaudit.cli.output import clean, out
from imgaudit.config import config_file_in_use

config_app = App(help="Show the configuration.", no_args_is_help=True)


@config_app.command("show")
def config_show(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Print the effective settings (file + environment + defaults)."""
    with command_settings(config) as settings:
        data = json.loads(settings.model_dump_json())
        source = str(config or config_file_in_use() or "(defaults and environment only)")
        where = {
            "data_dir": str(settings.data_dir.absolute()),
            "data_dir_origin": settings.data_dir_origin,
            "database": settings.database_in_use,
        }
        if as_json:
            emit({"config_file": source, **where, "settings": data})
            return
        head = (
            f"# config file: {source}\n# data dir: {where['data_dir']} ({settings.data_dir_origin})\n"
            f"# database: {where['database']}\n"
        )
        out.print(clean(head + _toml(data), multiline=True), markup=False)


def _toml(data: dict[str, Any]) -> str:
    """The settings as TOML; unset values (TOML has no null) become ``# key: not set`` in their table."""
    unset: dict[tuple[str, ...], list[str]] = {}

    def without_none(table: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
        kept: dict[str, Any] = {}
        for key, value in table.items():
            if value is None:
                unset.setdefault(path, []).append(key)
            else:
                kept[key] = without_none(value, (*path, key)) if isinstance(value, dict) else value
        return kept

    lines = tomli_w.dumps(without_none(data, ())).splitlines()
    for path, keys in unset.items():
        notes = [f"# {key}: not set" for key in keys]
        if not path:
            lines[:0] = notes
            continue
        header = (
            "[" + ".".join(k if re.fullmatch(r"[\w-]+", k, re.ASCII) else json.dumps(k) for k in path) + "]"
        )
        if header in lines:
            at = lines.index(header) + 1
        else:  # a table holding nothing else: tomli_w writes no header for it
            at, notes = len(lines), [f"# {'.'.join(path)}.{key}: not set" for key in keys]
        lines[at:at] = notes
    return "\n".join(lines) + "\n"
