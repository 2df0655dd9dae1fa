"""``imgaudit stats``: where the queue and the decisions stand.

``imgaudit.bootstrap`` is imported inside the command: it loads numpy, ONNX Runtime and SQLAlchemy
(seconds), which ``--help`` and the other groups' commands never need.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from imgaudit.cli.common import ConfigOpt, JsonOpt, command_settings, emit, parse_since, plain
from imgaudit.cli.output import cell, out

GROUPS = ("status", "decision", "duplicate_stage", "moderation", "error")  # the table's rows, in order


def stats(
    since: Annotated[
        str | None, typer.Option(help="Only decisions, errors and workers since: 15m, 2h, 7d or an ISO date.")
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Counts by status and decision, duplicate rate, throughput, error reasons, queue depth, workers."""
    from imgaudit.bootstrap import stats_service

    with command_settings(config) as settings:
        start = parse_since(since)
        with stats_service(settings) as svc:
            s = svc.stats(start)
        where = {"data_dir": str(settings.data_dir.absolute()), "database": settings.database_in_use}
        if as_json:
            emit(s.as_dict() | where)
            return
        plain(f"data dir {where['data_dir']} ({settings.data_dir_origin}); database {where['database']}")
        table = Table("group", "key", "count")
        for group in GROUPS:
            for k, v in s.counts.get(group, {}).items():
                table.add_row(group, cell(k), str(v))
        out.print(table)
        out.print(
            f"total {s.total}, indexed {s.indexed}, queue depth {s.queue_depth}, "
            f"duplicate rate {s.duplicate_rate:.1%}"
            + (f" (since {start:%Y-%m-%d %H:%M} UTC)" if start else "")
        )
        out.print(
            "throughput: "
            + ", ".join(
                f"{k.replace('_', ' ')} {v['processed']} ({v['per_minute']}/min)"
                for k, v in s.throughput.items()
            )
        )
        if s.workers:
            wt = Table("worker", "processed", "last item at", "in flight")
            for w in s.workers:
                wt.add_row(
                    cell(w["worker"]),
                    str(w["processed"]),
                    str(w["last_at"]),
                    str(s.in_flight.get(str(w["worker"]), 0)),
                )
            out.print(wt)
