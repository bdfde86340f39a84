"""The server's error hierarchy; servicer.py maps it to gRPC status codes in one place.

Exception tree (gRPC status in brackets)::

    ServerError                    [INTERNAL, generic message to the client]
    ├── NotFoundError              [NOT_FOUND]          unknown model or version
    ├── AlreadyExistsError         [ALREADY_EXISTS]     a shared-memory region name already registered
    ├── InvalidArgumentError       [INVALID_ARGUMENT]   a request that cannot be right
    ├── UnavailableError           [UNAVAILABLE]        model not ready, server shutting down
    │   ├── QueueFullError         [UNAVAILABLE]        the model's queue is at max_queue_size
    │   └── RetiredError           [UNAVAILABLE]        the version is unloading (replaced or unloaded)
    ├── DeadlineExceededError      [DEADLINE_EXCEEDED]  timed out while queued; never computed
    ├── CancelledError             [CANCELLED]          the client went away
    ├── UnimplementedError         [UNIMPLEMENTED]      an RPC or feature not built (yet)
    ├── InternalError              [INTERNAL]           an engine failed; details only in the log
    └── StepFailedError            [INTERNAL]           an ensemble step's model failed; the message names
                                                        the step and model, never the cause (the log has it)

Messages of every class but the root and InternalError go to the client
verbatim, so they must name the model, the tensor and what was expected, and
must never carry internals.

Loading has its own root, apart from the request errors above (a load error
never reaches a client as a status; its message is the version's UNAVAILABLE
reason, shown by RepositoryIndex and the log)::

    LoadError                      a model version could not be loaded
    └── ParameterError             a config parameter's value cannot be used (parameters.py)
"""

from __future__ import annotations

__all__ = [
    "AlreadyExistsError",
    "CancelledError",
    "DeadlineExceededError",
    "InternalError",
    "InvalidArgumentError",
    "LoadError",
    "NotFoundError",
    "QueueFullError",
    "RetiredError",
    "ServerError",
    "StepFailedError",
    "UnavailableError",
    "UnimplementedError",
]


class ServerError(Exception):
    """Base class; an unexpected error of this type reaches the client as INTERNAL."""

    #: whether str(self) may be sent to the client
    public = False
    #: the failed request's trace id (hex), set by tracing so the failure's log line names it
    trace_id = ""


class NotFoundError(ServerError):
    public = True


class AlreadyExistsError(ServerError):
    public = True


class InvalidArgumentError(ServerError):
    public = True


class UnavailableError(ServerError):
    public = True


class QueueFullError(UnavailableError):
    public = True

    def __init__(self, message: str, model: str = "") -> None:
        super().__init__(message)
        self.model = model  # the log summarises rejections per model


class RetiredError(UnavailableError):
    """The model version stopped taking requests; a request for "latest" may go to its successor."""

    public = True


class DeadlineExceededError(ServerError):
    public = True


class CancelledError(ServerError):
    public = True


class UnimplementedError(ServerError):
    public = True


class InternalError(ServerError):
    """An engine or server fault: the client gets a generic message, the log the details."""

    public = False


class StepFailedError(ServerError):
    """An ensemble step failed inside its model: INTERNAL, with a message naming only the step and model."""

    public = True


class LoadError(Exception):
    """A model version could not be loaded; the message is its UNAVAILABLE reason."""
