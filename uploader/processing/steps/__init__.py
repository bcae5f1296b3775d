"""The processing steps, one module each, and the one table that says which run for an
upload: every step in order, each naming the detected types it applies to."""

from __future__ import annotations

from uploader.processing.steps.base import (
    Step,
    StepContext,
    StepFailed,
    StepResult,
    applies,
)
from uploader.processing.steps.sha256 import Sha256Step
from uploader.processing.steps.sniff import SniffStep
from uploader.processing.steps.variants import VariantsStep
from uploader.settings import Settings

__all__ = [
    "Step",
    "StepContext",
    "StepFailed",
    "StepResult",
    "applies",
    "catalogue",
    "pipeline_for",
]


def catalogue(settings: Settings) -> tuple[Step, ...]:
    """Every step this deployment runs, in order. Sniffing comes first: what it finds
    chooses the rest."""
    del settings  # steps that need a service of their own are added when it is configured
    return (SniffStep(), Sha256Step(), VariantsStep())


def pipeline_for(steps: tuple[Step, ...], detected_type: str | None) -> tuple[Step, ...]:
    """The steps an upload of ``detected_type`` goes through."""
    return tuple(step for step in steps if applies(step, detected_type))
