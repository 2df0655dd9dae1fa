"""``imgaudit train``, ``imgaudit models list|promote|rollback`` (classifier heads from labelled folders) and
``imgaudit models prepare`` (the one-time model files).

``cli/main.py`` registers them (``app.command("train")(train_command)``, ``app.add_typer(models_app,
name="models")``). ``imgaudit.bootstrap`` (which builds the training and preparation services)
is imported inside the commands: they load torch, scikit-learn and ONNX Runtime (seconds), which
``--help`` and the other groups' commands never need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Column, Table

from imgaudit.cli.common import (
    RATE,
    App,
    ConfigOpt,
    JsonOpt,
    command_settings,
    emit,
    progress,
    step_progress,
)
from imgaudit.cli.output import cell, clean, console, out

models_app = App(
    help="One-time model files (prepare); saved classifier heads (list, promote, rollback).",
    no_args_is_help=True,
)

PHASES = {"embed": "decode + embed", "decode": "decode", "finetune": "fine-tune"}


@contextmanager
def _progress(quiet: bool) -> Iterator[Callable[[str, int, int], None] | None]:
    """A Rich bar per training phase, on stderr; nothing in JSON mode."""
    if quiet:
        yield None
        return
    with progress(RATE) as bar:
        tasks: dict[str, Any] = {}

        def step(phase: str, n: int, total: int) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(PHASES.get(phase, phase), total=total, rate="")
            task = tasks[phase]
            bar.advance(task, n)
            t = next(t for t in bar.tasks if t.id == task)
            if t.elapsed:
                bar.update(task, rate=f"{t.completed / t.elapsed:.1f} img/s")

        yield step


def _fmt(value: Any, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _print_metrics(result: dict[str, Any]) -> None:
    m = result["metrics"]
    table = Table("class", "precision", "recall", "F1", "support", title="held-out evaluation")
    for cls, row in m["per_class"].items():
        table.add_row(
            cell(cls), _fmt(row["precision"]), _fmt(row["recall"]), _fmt(row["f1"]), str(row["support"])
        )
    out.print(table)
    labels = m["confusion"]["labels"]  # class folder names: never parsed as markup, even as headers
    confusion = Table(
        "true \\ predicted", *(Column(header=cell(label)) for label in labels), title="confusion matrix"
    )
    for cls, row in zip(labels, m["confusion"]["matrix"], strict=True):
        confusion.add_row(cell(cls), *(str(v) for v in row))
    out.print(confusion)
    out.print(
        f"accuracy {_fmt(m['accuracy'])}, ROC-AUC {_fmt(m['roc_auc'])} ({m['roc_auc_of']}), "
        f"Brier {_fmt(m['brier'])}, ECE {_fmt(m['ece'])}, log loss {_fmt(m['log_loss'])}",
        markup=False,
    )


def train_command(
    dataset_dir: Annotated[
        Path,
        typer.Argument(
            help="One folder per class: DATASET_DIR/<label>/<images> (nested folders are fine).",
            metavar="DATASET_DIR",
            exists=True,
            file_okay=False,
        ),
    ],
    name: Annotated[str, typer.Option("--name", help="Head name; each training adds a version.")] = "default",
    holdout: Annotated[
        float,
        typer.Option("--holdout", help="Share of each class held out for evaluation.", min=0.05, max=0.5),
    ] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split, the CV folds and fine-tuning.")] = 0,
    promote: Annotated[bool, typer.Option("--promote", help="Make the new version active at once.")] = False,
    finetune: Annotated[
        bool,
        typer.Option("--finetune", help="Fine-tune the whole network (minutes, not seconds)."),
    ] = False,
    epochs: Annotated[int, typer.Option("--epochs", help="Fine-tuning epochs.", min=1, max=200)] = 5,
    batch_size: Annotated[
        int, typer.Option("--batch-size", help="Fine-tuning batch size.", min=1, max=512)
    ] = 32,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Train a classifier head on DATASET_DIR/<label>/ images; save it as a new version (not active unless
    --promote). Default: a linear head on the shared descriptor (seconds); --finetune: the whole network."""
    from imgaudit.bootstrap import build_encoder, train
    from imgaudit.services.training import TrainOptions

    with command_settings(config) as settings:
        encoder = build_encoder(settings)
        options = TrainOptions(
            name=name,
            holdout=holdout,
            seed=seed,
            promote=promote,
            finetune=finetune,
            epochs=epochs,
            batch_size=batch_size,
        )
        with _progress(as_json) as report:
            result = train(settings, dataset_dir, encoder, options, report)
        data = result.as_dict()
        if as_json:
            emit({"event": "train", **data})
            return
        if data["skipped"]:
            reasons = ", ".join(f"{k} {v}" for k, v in sorted(data["skipped"].items()))
            examples = ", ".join([e for ex in data["skipped_examples"].values() for e in ex][:3])
            console.print(
                clean(f"warning: skipped {sum(data['skipped'].values())} files ({reasons}), e.g. {examples}"),
                markup=False,
            )
        if data["outside_class_folders"]:
            console.print(
                clean(
                    f"warning: ignored {data['outside_class_folders']} files directly in {dataset_dir} "
                    "(images belong in a class folder)"
                ),
                markup=False,
            )
        ds = data["dataset"]
        per_class = ", ".join(f"{k} {v}" for k, v in ds["per_class"].items())
        out.print(
            clean(
                f"{data['model']} ({data['kind']}): {ds['images']} images ({per_class}); trained on "
                f"{ds['split']['train']}, evaluated on {ds['split']['held_out']} held out"
            ),
            markup=False,
        )
        _print_metrics(data)
        sec = data["seconds"]
        timing = ", ".join(
            f"{k} {v:.1f}s"
            for k, v in sec.items()
            if k in ("embed", "fit", "decode", "finetune", "export", "evaluate")
        )
        out.print(f"time: {timing}", markup=False)
        if not data["pass_classes"]:
            console.print(
                "warning: no class is listed in moderation.pass_classes, so the policy would treat every "
                "class as a violation; name the clean class e.g. 'normal', or set moderation.pass_classes",
                markup=False,
            )
        out.print(clean(f"saved {data['model']} in {data['path']}"), markup=False)
        if data["promoted"]:
            out.print(
                clean(
                    f"{data['model']} is now active; running workers switch within "
                    f"{settings.moderation.reload_every:g}s"
                ),
                markup=False,
            )
        else:
            out.print(clean(f"not active yet: imgaudit models promote {data['model']}"), markup=False)


@models_app.command("list")
def list_command(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Every saved classifier version with its held-out metrics; * marks the active one."""
    from imgaudit.services.training import list_models

    with command_settings(config) as settings:
        rows = list_models(settings)
        if as_json:
            for row in rows:
                emit(row)
            return
        if not rows:
            out.print("no classifiers yet: imgaudit train DATASET_DIR", markup=False)
            return
        fixed = [Column(h, no_wrap=True) for h in ("model", "kind")]  # wrap the classes, not the names
        table = Table("", *fixed, "classes", "train/test", "accuracy", "ROC-AUC", "Brier", "created (UTC)")
        for r in rows:
            if "error" in r:
                table.add_row("", cell(r["model"]), "?", cell(r["error"]), "", "", "", "", "")
                continue
            table.add_row(
                "*" if r["active"] else "",
                cell(r["model"]),
                cell(r["kind"]),
                cell(", ".join(r["classes"] or [])),
                f"{r['train']}/{r['held_out']}",
                _fmt(r["accuracy"]),
                _fmt(r["roc_auc"]),
                _fmt(r["brier"]),
                str(r["created_at"] or "")[:16].replace("T", " "),
            )
        out.print(table)


def _switch(
    verb: str, fn: Callable[..., dict[str, Any]], config: Path | None, as_json: bool, *args: Any
) -> None:
    from imgaudit.bootstrap import build_encoder

    with command_settings(config) as settings:
        result = fn(settings, *args, build_encoder(settings))
        if as_json:
            emit({"event": verb, **result})
        elif not result["changed"]:
            out.print(clean(f"{result['active']} is already active"), markup=False)
        else:
            out.print(
                clean(
                    f"{result['active']} is now active (was {result['previous'] or 'none'}); running "
                    f"workers switch within {settings.moderation.reload_every:g}s"
                ),
                markup=False,
            )


@models_app.command("promote")
def promote_command(
    ref: Annotated[str, typer.Argument(help="NAME or NAME@vN (default: the latest version of NAME).")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Make a saved version the active classifier (refused if workers could not use it)."""
    from imgaudit.bootstrap import promote

    _switch("promote", promote, config, as_json, ref)


@models_app.command("rollback")
def rollback_command(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Re-activate the previously active classifier (again: one further back)."""
    from imgaudit.bootstrap import rollback

    _switch("rollback", rollback, config, as_json)


@models_app.command("prepare")
def prepare_command(config: ConfigOpt = None, as_json: JsonOpt = False) -> None:
    """Build the one-time model files now: the visual encoder's ONNX export and search's label space.

    Minutes the first time, with a progress bar; instant once they exist (it then changes nothing)."""
    from imgaudit.bootstrap import prepare

    with command_settings(config) as settings:
        with step_progress(as_json) as report:
            steps = prepare(settings, report)
        if as_json:
            for step in steps:
                emit({"event": "prepare", **step.as_dict()})
            return
        for step in steps:
            what = PREPARED[step.step]
            done = f"built in {step.seconds:.1f}s" if step.built else "ready"
            out.print(clean(f"{what}: {done} ({step.path or 'in memory, no cache_dir'})"), markup=False)
        if not any(step.built for step in steps):
            out.print("everything is ready; nothing to do", markup=False)


PREPARED = {"visual_model": "visual encoder (ONNX)", "label_space": "search label space"}
