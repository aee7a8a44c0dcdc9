"""The states a job, a deployment and a rollout move through, as stored in their rows. Compare and write these, never
string literals; a StrEnum member is its string, so rows, JSON bodies and the CLI see the same text."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """A fine-tuning job's status (Azure's names). Only the job runner writes it."""

    QUEUED = "Queued"
    STARTING = "Starting"
    RUNNING = "Running"
    FINALIZING = "Finalizing"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCEL_REQUESTED = "CancelRequested"
    CANCELED = "Canceled"

    @property
    def terminal(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELED)


class DeploymentState(StrEnum):
    """An online deployment's provisioning state (Azure's names). Only the endpoint service writes it."""

    CREATING = "Creating"
    UPDATING = "Updating"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    DELETING = "Deleting"


class RolloutState(StrEnum):
    """A rollout's state. Only evaluation/rollout_store.py writes it."""

    RUNNING = "Running"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    STALLED = "Stalled"
    CANCELED = "Canceled"
    FAILED = "Failed"  # the controller could not carry it on (its endpoint or deployment went away)

    @property
    def terminal(self) -> bool:
        return self is not RolloutState.RUNNING
