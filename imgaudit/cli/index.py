"""``imgaudit index rebuild``: the dedup indexes and the search indexes, rebuilt from the store.

``imgaudit.bootstrap`` is imported inside the command: it loads numpy, ONNX Runtime, FAISS and tantivy
(seconds), which ``--help`` and the other groups' commands never need.
"""

from __future__ import annotations

from imgaudit.cli.common import App, ConfigOpt, JsonOpt, command_settings, emit, with_totals_progress
from imgaudit.cli.output import out

index_app = App(help="Maintain the vector and hash indexes.", no_args_is_help=True)


@index_app.command("rebuild")
def index_rebuild(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Rebuild the dedup indexes (vector, hash) and the search indexes from the store."""
    from imgaudit.bootstrap import search_service

    with command_settings(config) as settings:
        with search_service(settings) as search:
            indexed, searchable = with_totals_progress("search indexes", search.rebuild_all, as_json)
        if as_json:
            emit({"event": "index_rebuild", "indexed": indexed, "searchable": searchable})
        else:
            out.print(f"rebuilt the indexes with {indexed} images; {searchable} searchable")
