"""Training classifier heads from a labelled folder, and the registry of saved heads: what the entry points
call. The work is split by subject: ``dataset`` (scan, decode, split), ``fit`` (the linear head),
``metrics`` (held-out evaluation), ``trainer`` (a training run end to end) and ``registry`` (saving,
promoting, rolling back). ``imgaudit.bootstrap`` hands in the classifier models (``heads``)."""

from imgaudit.services.training.dataset import Progress
from imgaudit.services.training.registry import list_models, promote, rollback
from imgaudit.services.training.trainer import TrainOptions, TrainResult, train

__all__ = ["Progress", "TrainOptions", "TrainResult", "list_models", "promote", "rollback", "train"]
