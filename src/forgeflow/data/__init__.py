"""Data stage: the shipped sample dataset, `prepare_dataset` (download + split) and chat-file validation."""

from forgeflow.data.prepare import PrepareResult, prepare_dataset
from forgeflow.data.sample import SAMPLE_ANSWER, SAMPLE_NAME, SAMPLE_PATH, SAMPLE_QUESTION
from forgeflow.data.validate import LengthStats, Problem, ValidationReport, iter_conversations, validate_file

__all__ = [
    "SAMPLE_ANSWER",
    "SAMPLE_NAME",
    "SAMPLE_PATH",
    "SAMPLE_QUESTION",
    "LengthStats",
    "PrepareResult",
    "Problem",
    "ValidationReport",
    "iter_conversations",
    "prepare_dataset",
    "validate_file",
]
