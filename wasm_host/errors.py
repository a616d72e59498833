"""The one exception tree of wasmgate: every error any layer raises on purpose.

It belongs to no layer. It sits in the lowest package only so that every layer can import it without an upward
import, and it imports nothing at all: neither HTTP nor the sandbox (a contract in pyproject.toml, checked by
tests/test_layers.py). The gateway maps it to HTTP statuses in one place, ``gateway.http_errors``::

    WasmgateError
    ├── InvalidRequest          bad input from the caller: body, tensors, parameters        -> 400
    │   ├── InvalidFunction     a push that cannot be accepted: bad module, model or name   -> 400
    │   └── InvalidArtifact     a registry tag that is no servable function                 -> 400
    ├── Unauthorized            a missing or wrong token                                     -> 401
    ├── NotFound                no such function, version or blob                            -> 404
    ├── TooLarge                a body, tensor, model or module past its configured limit    -> 413
    ├── Unavailable             no capacity or not ready; may carry a retry hint            -> 503
    │   ├── TooManyRequests     a function's queue is full; carries a retry hint            -> 429
    │   └── ReplicaUnreachable  a replica or endpoint did not take the request              -> 503
    │       └── ReplicaBusy     a replica answered 429; also a TooManyRequests              -> 429
    ├── UpstreamError           a service the gateway depends on (the OCI registry) refused  -> 502
    ├── GuestFailure            the function itself failed                                  -> 500
    │   ├── GuestTrap           the guest trapped (unreachable, out of bounds, stack, memory) -> 500
    │   └── DeadlineExceeded    the guest ran past its deadline and was interrupted         -> 504
    └── ClientError             the ``wasm`` CLI's admin client: the gateway refused or was
                                unreachable (never raised by a server, so never mapped)

Foreign exceptions (wasmtime traps, onnxruntime errors, httpx and OS errors) are translated where they enter,
with ``raise ... from exc``, so nothing outside this tree reaches the HTTP edge as a known failure; anything
else is a bug, answered 500 and logged once with its traceback.
"""

from __future__ import annotations


class WasmgateError(Exception):
    """Base of every error wasmgate raises on purpose. ``str(err)`` is safe to show to the caller.

    An error that ends a request is answered like a success about where it ran: on its way out, the tier that
    ran (or refused) the request sets ``replica`` (the process, where one is known), and the dispatch sets
    ``headers``, the routing headers its answer carries, which the HTTP edge adds."""

    replica: str | None = None
    headers: dict[str, str] | None = None


class InvalidRequest(WasmgateError):
    """The caller's input cannot be served as sent: the message says what to change."""


class InvalidFunction(InvalidRequest):
    """A push was refused. The store is left exactly as it was."""


class InvalidArtifact(InvalidRequest):
    """A registry tag names something wasmgate cannot serve as a function; the message says what is wrong."""


class Unauthorized(WasmgateError):
    """The request lacks a valid bearer token."""


class NotFound(WasmgateError):
    """The named function (or version, or blob) does not exist."""


class TooLarge(WasmgateError):
    """Something exceeded a configured size limit; the message names the limit and its setting."""


class Unavailable(WasmgateError):
    """The gateway cannot take the request now. ``retry_after`` is a hint in seconds, if known."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TooManyRequests(Unavailable):
    """A function's concurrency limit and its wait queue are both full."""


class ReplicaUnreachable(Unavailable):
    """A pod-tier replica (or a registered endpoint) did not take the request; no response was produced, so
    another candidate may serve it. ``replica`` is its id, once known."""

    def __init__(self, message: str, retry_after: float | None = None, replica: str | None = None) -> None:
        super().__init__(message, retry_after)
        self.replica = replica


class ReplicaBusy(ReplicaUnreachable, TooManyRequests):
    """The replica answered 429: its admission refused the request before running it. Another candidate may
    take it; when none can, the caller gets the 429."""


class UpstreamError(WasmgateError):
    """A service the gateway depends on (the OCI registry store) answered, but refused or failed the call in a
    way a retry will not fix: wrong credentials, deletes disabled, bytes that do not match their digest. The
    message names the setting to fix where there is one."""


class GuestFailure(WasmgateError):
    """The function failed while serving the request (it reported a failure, or its output was malformed)."""


class GuestTrap(GuestFailure):
    """The guest trapped. The instance that trapped is discarded and never reused."""


class DeadlineExceeded(GuestFailure):
    """The guest ran past its deadline and was interrupted by the engine's epoch ticker."""


class ClientError(WasmgateError):
    """The ``wasm`` CLI's call to a gateway was refused, or the gateway could not be reached. The message is
    the gateway's own."""
