"""Pure decisions of the pod tier: how many replicas to run, and which replica takes a request.

No I/O and no clock here: the activator passes in what it observed, so every rule is testable on its own.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence

from router.scaler import Replica

MIN_GAPS = 2  # idle gaps seen before the keep-alive stretches past the idle grace
KEPT_GAPS = 32  # the newest idle gaps, so that the keep-alive follows a change in the traffic's rhythm


@dataclasses.dataclass(frozen=True)
class ScalePolicy:
    #: Replicas kept up without traffic.
    min_replicas: int = 0
    #: Most replicas the pod tier scales to.
    max_replicas: int = 2
    #: In-flight requests one replica is scaled for.
    target_in_flight: int = 16
    #: Seconds demand must stay below the running replica count before scaling down (to zero included).
    idle_grace_s: float = 60.0
    #: The most the keep-alive may stretch the wait before scaling to zero (seconds; see keep_alive_s).
    keep_alive_max_s: float = 0.0

    def __post_init__(self) -> None:
        if self.max_replicas < 1 or self.min_replicas < 0 or self.min_replicas > self.max_replicas:
            raise ValueError(
                f"pod replicas: need 0 <= min ({self.min_replicas}) <= max ({self.max_replicas}) and max >= 1"
            )
        if self.target_in_flight < 1:
            raise ValueError("pod_target_in_flight must be at least 1")


def keep_alive_s(gaps: Sequence[float], idle_grace_s: float, ceiling_s: float) -> float:
    """How long the tier stays up after its last request before going to zero: the idle grace, stretched to
    cover the idle gaps this tier has seen, so that traffic that comes back after a pause finds a warm replica.

    This is the keep-alive half of the hybrid histogram policy of Shahrad et al. (Serverless in the Wild,
    USENIX ATC 2020), for a tier rather than one function: ``gaps`` are recent idle gaps (seconds from the
    tier's last request to the next) longer than the idle grace, the only ones that cost a cold start. With
    at least ``MIN_GAPS`` of them, the keep-alive is their 90th percentile plus 10%, within ``idle_grace_s``
    and ``ceiling_s`` (setting ``pod_keep_alive_max_s``): a pause then costs at most that long of one
    replica's time. Gaps longer than the ceiling are counted (they pull the percentile up to the ceiling) but
    not waited out. A ceiling at or below the grace turns the keep-alive off."""
    if ceiling_s <= idle_grace_s or len(gaps) < MIN_GAPS:
        return idle_grace_s
    ordered = sorted(gaps)
    p90 = ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]
    return min(ceiling_s, max(idle_grace_s, 1.1 * p90))


class IdleGaps:
    """The idle gaps of a tier longer than its idle grace, and the keep-alive they make (:func:`keep_alive_s`).

    Fed the demand seen at each scaling decision with that decision's time (no clock of its own), so a gap
    is measured to the resolution of the scaling tick. A gap starts when demand goes to zero after some has
    been seen (the time before the first request is not a gap), and ends at the next demand."""

    def __init__(self, policy: ScalePolicy) -> None:
        self.policy = policy
        self.gaps: collections.deque[float] = collections.deque(maxlen=KEPT_GAPS)
        self.keep_alive_s = policy.idle_grace_s  # how long the last replica stays up after the last request
        self._since: float | None = None
        self._active = False

    def note(self, demand: int, now: float) -> None:
        if demand == 0:
            if self._active and self._since is None:
                self._since = now
            return
        self._active = True
        if self._since is not None:
            gap, self._since = now - self._since, None
            if gap > self.policy.idle_grace_s:
                self.gaps.append(gap)
                self.keep_alive_s = keep_alive_s(self.gaps, self.policy.idle_grace_s, self.policy.keep_alive_max_s)


class Scaling:
    """The pod tier's scaling decisions over time: what the activator keeps between two of them, and each one.
    The activator drives it with its clock (``router.activator``), the routing bench's simulation with its
    own (``bench.routing_sim``), so both decide alike.

    Demand is the most requests seen in flight or held at once since the last decision (:meth:`seen`), not
    the count at the decision's instant: a stream of short requests is mostly between requests at any given
    instant, and must not read as no demand. Scaling down waits until that demand has needed fewer replicas
    than are running for ``idle_grace_s`` since the last change, and to zero for the keep-alive (``idle``)."""

    def __init__(self, policy: ScalePolicy) -> None:
        self.policy = policy
        self.idle = IdleGaps(policy)
        self._peak = 0
        self._below_since: float | None = None

    def seen(self, demand: int) -> None:
        """Requests in flight or held now (or one, for a request served elsewhere that wants this tier)."""
        self._peak = max(self._peak, demand)

    def decide(self, demand_now: int, current: int, now: float) -> tuple[int, int]:
        """(the replica count to ask for, the demand it was decided on), ``current`` being the count asked for
        last; call :meth:`scaled` once a different count has been asked for."""
        demand = max(self._peak, demand_now)
        self._peak = 0
        self.idle.note(demand, now)
        if needed_replicas(self.policy, demand) >= current:
            self._below_since = None
        elif self._below_since is None:
            self._below_since = now
        below_for = 0.0 if self._below_since is None else now - self._below_since
        return desired_replicas(self.policy, demand, current, below_for, self.idle.keep_alive_s), demand

    def scaled(self) -> None:
        """A new count was asked for: the wait for the next scale-down starts again."""
        self._below_since = None


def needed_replicas(policy: ScalePolicy, demand: int) -> int:
    """Replicas for ``demand`` requests (in flight plus held): demand / target, rounded up, within bounds.
    Any demand at all needs one replica."""
    wanted = math.ceil(demand / policy.target_in_flight) if demand > 0 else 0
    return max(policy.min_replicas, min(policy.max_replicas, wanted))


def desired_replicas(
    policy: ScalePolicy, demand: int, current: int, below_for_s: float, keep_alive: float | None = None
) -> int:
    """The replica count to ask for now. Scaling up is immediate (held requests are waiting); scaling down
    waits until demand has needed fewer than ``current`` replicas for ``idle_grace_s`` (``below_for_s``),
    so a short lull between bursts does not send the next burst back through a cold start; and the last
    replica goes only once ``keep_alive`` (:func:`keep_alive_s`) has passed too."""
    needed = needed_replicas(policy, demand)
    if needed >= current:
        return needed
    if below_for_s < policy.idle_grace_s:
        return current
    if needed == 0 and below_for_s < (keep_alive or 0.0):
        return 1  # one replica waits out the keep-alive
    return needed


def pick_replica(
    ready: Sequence[Replica],
    in_flight: Mapping[str, int],
    holders: Collection[str],
    target_in_flight: int,
    exclude: Collection[str] = (),
) -> Replica | None:
    """The replica for one request, or None when no ready replica may take it.

    Model affinity first: among replicas that already hold the function's model (``holders``) and have room
    (fewer than ``target_in_flight`` in flight), the least loaded. Otherwise the least loaded replica of all,
    which then loads the model. Ties go to the earlier replica, so the order of ``ready`` is stable."""
    best: Replica | None = None
    best_key: tuple[int, int] | None = None
    for replica in ready:
        if replica.id in exclude:
            continue
        load = in_flight.get(replica.id, 0)
        warm = replica.id in holders and load < target_in_flight
        key = (0 if warm else 1, load)
        if best_key is None or key < best_key:
            best, best_key = replica, key
    return best
