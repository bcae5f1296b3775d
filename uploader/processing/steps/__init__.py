"""The processing steps, one module each, and the one table that says which run for an
upload: every step in order, each naming the detected types it applies to."""

from __future__ import annotations

from uploader.processing.clamav import Clamd
from uploader.processing.steps.base import (
    Step,
    StepContext,
    StepFailed,
    StepRejected,
    StepResult,
    applies,
)
from uploader.processing.steps.media import MediaStep
from uploader.processing.steps.pdf import PdfStep
from uploader.processing.steps.scan import ScanStep
from uploader.processing.steps.sha256 import Sha256Step
from uploader.processing.steps.sniff import SniffStep
from uploader.processing.steps.variants import VariantsStep
from uploader.settings import Settings

__all__ = [
    "Step",
    "StepContext",
    "StepFailed",
    "StepRejected",
    "StepResult",
    "applies",
    "catalogue",
    "pipeline_for",
]


def catalogue(settings: Settings) -> tuple[Step, ...]:
    """Every step this deployment runs, in order. Sniffing comes first: what it finds
    chooses the rest. Scanning, where configured, comes before any step that decodes."""
    scanning: tuple[Step, ...] = ()
    if settings.clamav_url:
        clamd = Clamd(settings.clamav_url, settings.scan_timeout_seconds)
        scanning = (ScanStep(clamd, settings.scan_oversize),)
    return (SniffStep(), Sha256Step(), *scanning, VariantsStep(), MediaStep(), PdfStep())


def pipeline_for(steps: tuple[Step, ...], detected_type: str | None) -> tuple[Step, ...]:
    """The steps an upload of ``detected_type`` goes through."""
    return tuple(step for step in steps if applies(step, detected_type))
