"""Typed exceptions for prunesvc calls: one class per gRPC status code a caller acts on."""
import grpc


class PrunesvcError(Exception):
    """A call failed. `code` is the grpc.StatusCode, `details` the server's message."""

    def __init__(self, code, details):
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class InvalidArgument(PrunesvcError):
    """The request is wrong (a spec field, a dataset): the message names what to fix."""


class NotFound(PrunesvcError):
    """No such job, dataset or artifact (or another tenant's)."""


class AlreadyExists(PrunesvcError):
    pass


class FailedPrecondition(PrunesvcError):
    """The object is not in a state that allows the call (e.g. deleting a running job)."""


class OutOfRange(PrunesvcError):
    pass


class ResourceExhausted(PrunesvcError):
    """A limit or a tenant quota was reached; the message names it."""


class Unauthenticated(PrunesvcError):
    """No token, or an unknown or revoked one."""


class PermissionDenied(PrunesvcError):
    """The token's role may not do this (e.g. ListWorkers needs admin)."""


class Unavailable(PrunesvcError):
    """The scheduler cannot be reached (or is shutting down); retrying later may work."""


class DeadlineExceeded(PrunesvcError):
    pass


class Cancelled(PrunesvcError):
    pass


class DataLoss(PrunesvcError):
    """Downloaded bytes do not match their checksum."""


_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.OUT_OF_RANGE: OutOfRange,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhausted,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.CANCELLED: Cancelled,
    grpc.StatusCode.DATA_LOSS: DataLoss,
}


def from_rpc_error(err):
    """The typed exception for a grpc.RpcError."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = err.details() if hasattr(err, "details") else str(err)
    return _BY_CODE.get(code, PrunesvcError)(code, details or "")
