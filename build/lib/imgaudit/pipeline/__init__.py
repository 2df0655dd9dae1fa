"""A batch through load -> decode -> signals (dedup and moderation) -> lookups -> decisions -> persist."""

from imgaudit.pipeline.batch import Analysed, BatchReport, Pipeline
from imgaudit.pipeline.moderation import Moderated, Moderator

__all__ = ["Analysed", "BatchReport", "Moderated", "Moderator", "Pipeline"]
