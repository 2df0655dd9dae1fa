"""How models run. ``OrtSession`` is the only place that imports onnxruntime."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

import numpy as np

from imgaudit.errors import ModelError


class ModelSession(Protocol):
    """Runs a model: named float inputs in, named outputs out."""

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def input_names(self) -> list[str]: ...

    def output_names(self) -> list[str]: ...


class OrtSession:
    """An ONNX Runtime CPU session, created on first use and reused for the life of the process."""

    def __init__(self, path: Path, threads: int = 0) -> None:
        self.path = Path(path)
        self.threads = threads
        self._session = None
        self._lock = threading.Lock()

    def _load(self):
        if self._session is None:
            with self._lock:
                if self._session is None:
                    import onnxruntime as ort

                    opts = ort.SessionOptions()
                    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                    if self.threads:
                        opts.intra_op_num_threads = self.threads
                    opts.inter_op_num_threads = 1
                    try:
                        self._session = ort.InferenceSession(
                            str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
                        )
                    except Exception as exc:  # onnxruntime raises its own untyped errors
                        raise ModelError(f"cannot load model {self.path}: {exc}") from exc
        return self._session

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self._load()
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs), strict=True))

    def input_names(self) -> list[str]:
        return [i.name for i in self._load().get_inputs()]

    def output_names(self) -> list[str]:
        return [o.name for o in self._load().get_outputs()]
