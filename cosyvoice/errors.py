"""Errors a request can end with.

UserInputError is the user's to fix (logged as WARNING, shown as a plain message);
EngineError is ours (logged as ERROR); both keep the service serving.
"""


class StudioError(Exception):
    """Base class: `str(err)` is a message fit to show a user."""

    param: str | None = None     # the request field a refusal is about (validation.about sets it)
    logged: bool = False         # the service already wrote this error's log line; front ends add none


class UserInputError(StudioError):
    """The request cannot be served as given: bad text, audio, markup or options."""


class ServerBusyError(StudioError):
    """The queue is full; the user should try again shortly."""


class EngineError(StudioError):
    """Synthesis failed for a reason on our side (model, device, memory)."""

    def __init__(self, message: str, stage: str = "synthesize"):
        super().__init__(message)
        self.stage = stage


class ModelDirError(StudioError):
    """A model directory is missing files or holds files that do not fit the model."""


class OutputsError(EngineError):
    """A result could not be written to the outputs folder (disk full, permissions); the operator fixes it."""

    def __init__(self, message: str):
        super().__init__(message, stage="save")


class StorageFullError(OutputsError):
    """A folder we write to (outputs/, voices/) has no room: disk full, quota, or under the --min-free-mb
    floor. HTTP 507 (server/openai_api.py's ERRORS table); the operator frees space."""
