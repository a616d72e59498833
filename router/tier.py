"""The one interface of a tier, as the request orchestration (``gateway.dispatch``) sees it.

Each request goes decide -> attempt -> (at most one) retry. For the decision, every tier reports its own state
for the policy (:meth:`TierBackend.state`: a :class:`~router.policy.WasmState` or :class:`~router.policy.PodState`);
the policy picks one (``router.policy.decide``); that tier runs or forwards the request (:meth:`TierBackend.run`).
A tier that did not take the request (it never ran: admission refused it, or a replica was unreachable)
raises :class:`NotTaken`, and the orchestration asks the other candidate, or the same tier, whether it can
take one retry now (:meth:`TierBackend.can_retry`). The orchestration never reaches into a tier: what it needs is
here.

Implementations: :class:`router.wasm_tier.WasmTier` (the sandbox in this process) and
:class:`router.pod_tier.PodTier` (runner replicas, or a function's registered endpoint).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Protocol, TypeVar

from router.admission import Admission
from router.inline import Placement
from router.policy import Tier as TierName
from wasm_host.errors import WasmgateError
from wasm_host.pool import InstancePool
from wasm_host.tensors import Tensor, TensorSpec


class Servable(Protocol):
    """A function loaded in this process (``gateway.functions.serving.LoadedFunction``): its pool, its
    admission, its declared signature, and what the tier records on it."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def inputs(self) -> list[TensorSpec] | None: ...

    @property
    def outputs(self) -> list[TensorSpec] | None: ...

    @property
    def pool(self) -> InstancePool: ...

    @property
    def admission(self) -> Admission: ...

    cold: bool  # until its first request has been served
    last_used: float  # time.monotonic() of its last request, for the reaper
    placement: Placement | None  # where its next call runs (router.inline); None: not decided yet


@dataclasses.dataclass(slots=True)
class Job:
    """One request of one function, as every tier sees it: which function and version, how many rows, the
    function's registered endpoint if it has one, the function as this process has it loaded (None: not
    loaded here; the Wasm tier loads it if it runs the request), and its own pod-tier deadline (pool setting
    ``pod_deadline_ms``, 0: the runners'), which the pod tier waits for."""

    name: str
    version: int
    rows: int
    endpoint: str | None = None
    endpoint_model: str | None = None
    loaded: Servable | None = None
    pod_deadline_ms: int = 0


class Call(Protocol):
    """The request itself, as the tiers need it: its bytes and headers (forwarded as they are to a replica),
    or its tensors (run in the sandbox), and the encoding of an answer the way the caller asked."""

    @property
    def body(self) -> bytes: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    def inputs(self, name: str, declared: Sequence[TensorSpec] | None) -> list[Tensor]:
        """The request's tensors, checked against ``declared`` (None: taken as sent) and in its order.
        Raises InvalidRequest naming what does not match."""

    def encode(self, name: str, version: int, outputs: Sequence[Tensor]) -> tuple[bytes, Mapping[str, str]]:
        """The response body and its headers for ``outputs``, with the outputs and encodings asked for.
        Raises GuestFailure, before encoding anything, when the body would pass the response size limit."""


@dataclasses.dataclass(slots=True)  # a value, made for every request: not frozen (see wasm_host.tensors.Tensor)
class Outcome:
    """What a tier answered: the status, body and headers to send, the replica that served it (what
    ``x-wasmgate-replica`` reports), and whether it was a cold start (a first request since load, or a
    request held while the tier scaled up)."""

    status: int
    body: bytes
    headers: Mapping[str, str]
    replica: str
    cold: bool = False


class NotTaken(Exception):  # control flow between a tier and the orchestration, never an answer
    """The tier did not take the request: it never ran, so it may run elsewhere, once. ``cause`` is what the
    caller gets when no retry can be made; ``replica`` names the replica that failed, if any."""

    def __init__(self, cause: WasmgateError, replica: str | None = None) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.replica = replica


S_co = TypeVar("S_co", covariant=True)


class TierBackend(Protocol[S_co]):
    """A tier: reports its state for the policy, and runs (or forwards) requests."""

    name: TierName

    def state(self, job: Job) -> S_co:
        """This tier's state for ``job``, as the policy reads it. Cheap: called on every request."""

    async def run(self, job: Job, call: Call, retry: bool = False, exclude: Sequence[str] = ()) -> Outcome:
        """Run ``job`` once. ``retry``: this is the one retry, which never waits for capacity to start;
        ``exclude``: replicas not to use (the one that just failed). Raises :class:`NotTaken` when the request
        did not run, and the request's own error (a WasmgateError) when it ran and failed. A tier learns its
        own service times from what it runs."""

    def can_retry(self, job: Job, failed: str | None, same_tier: bool) -> bool:
        """Whether this tier can take ``job``'s one retry now, without waiting for capacity to start: after
        the first attempt failed on ``failed`` (a replica id, or None), here (``same_tier``) or on the other
        tier."""

    def expect(self, job: Job) -> None:
        """The policy sent ``job`` elsewhere but counts it as demand here (``Decision.scale_pod``): get
        ready for the requests that follow."""
