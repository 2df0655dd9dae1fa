"""The ``imgaudit`` application, assembled from its command groups in the order ``imgaudit --help`` lists
them. The commands live in one module per group; what they share is in ``imgaudit.cli.common``."""

from __future__ import annotations

from typing import Annotated

import typer

from imgaudit.cli import config, index, ingest, items, models, search, stats, worker
from imgaudit.cli.common import App
from imgaudit.cli.output import out

app = App(
    help="imgaudit: image review for e-commerce content.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            number = version("imgaudit")
        except PackageNotFoundError:  # running from a source tree that was never installed
            from imgaudit import __version__ as number
        out.print(f"imgaudit {number}", markup=False)
        raise typer.Exit()


@app.callback()
def _root(
    _show_version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", callback=_version, is_eager=True),
    ] = False,
) -> None:
    """imgaudit: image review for e-commerce content."""


for command in (
    ingest.ingest,
    ingest.enqueue,
    ingest.check,
    items.explain,
    search.search,
    search.groups,
    stats.stats,
    items.reset,
    ingest.demo,
    items.recalc,
    items.status,
):
    app.command()(command)
app.command("train")(models.train_command)
app.add_typer(config.config_app, name="config")
app.add_typer(index.index_app, name="index")
app.add_typer(worker.worker_app, name="worker")
app.add_typer(models.models_app, name="models")
