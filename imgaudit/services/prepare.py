"""``imgaudit models prepare``: every one-time derivation, done up front instead of inside a first command.

Two files are derived from what the wheels ship, both in ``cache_dir``: the visual encoder's ONNX export
(seconds, needs torch) and search's label space (several thousand label prompts embedded with the text
model: a minute on an idle machine, several on a busy one). Each step is skipped when its file is there,
so running this again is quick and changes nothing. ``imgaudit.bootstrap.prepare`` hands in both.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from imgaudit.label_space import LabelSpace
from imgaudit.models.ports import DerivedModel
from imgaudit.services.search import build_label_space

# (step, done, total), only for steps that do work: "visual_model" reports 0 of 1 then 1 of 1,
# "label_space" the texts embedded so far.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, slots=True)
class Prepared:
    step: str
    path: str
    built: bool  # False: it was there already
    seconds: float

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def prepare_models(
    visual_model: DerivedModel, labels: LabelSpace, progress: Progress | None = None
) -> list[Prepared]:
    """Derive whatever is missing; one result per step, in order."""
    report = progress or (lambda _step, _done, _total: None)
    done: list[Prepared] = []

    start = time.perf_counter()
    model = visual_model.path
    if not model.is_file():
        report("visual_model", 0, 1)  # one opaque call: the bar shows it started, then that it ended
    if visual_model.ensure():
        report("visual_model", 1, 1)
        done.append(Prepared("visual_model", str(model), True, _since(start)))
    else:
        done.append(Prepared("visual_model", str(model), False, _since(start)))

    start = time.perf_counter()
    path = labels.cache_path()
    built = build_label_space(labels, lambda n, total: report("label_space", n, total))
    done.append(Prepared("label_space", str(path) if path else "", built, _since(start)))
    return done


def _since(start: float) -> float:
    return round(time.perf_counter() - start, 2)
