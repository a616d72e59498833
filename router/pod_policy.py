"""Pure decisions of the pod tier: how many replicas to run, and which replica takes a request.

No I/O and no clock here: the activator passes in what it observed, so every rule is testable on its own.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping, Sequence

from router.scaler import Replica


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

    def __post_init__(self) -> None:
        if self.max_replicas < 1 or self.min_replicas < 0 or self.min_replicas > self.max_replicas:
            raise ValueError(
                f"pod replicas: need 0 <= min ({self.min_replicas}) <= max ({self.max_replicas}) and max >= 1"
            )
        if self.target_in_flight < 1:
            raise ValueError("pod_target_in_flight must be at least 1")


def needed_replicas(policy: ScalePolicy, demand: int) -> int:
    """Replicas for ``demand`` requests (in flight plus held): demand / target, rounded up, within bounds.
    Any demand at all needs one replica."""
    wanted = math.ceil(demand / policy.target_in_flight) if demand > 0 else 0
    return max(policy.min_replicas, min(policy.max_replicas, wanted))


def desired_replicas(policy: ScalePolicy, demand: int, current: int, below_for_s: float) -> int:
    """The replica count to ask for now. Scaling up is immediate (held requests are waiting); scaling down
    waits until demand has needed fewer than ``current`` replicas for ``idle_grace_s`` (``below_for_s``),
    so a short lull between bursts does not send the next burst back through a cold start."""
    needed = needed_replicas(policy, demand)
    if needed >= current:
        return needed
    return needed if below_for_s >= policy.idle_grace_s else current


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
