"""Where a function's next guest call runs: on the event loop thread (inline) or on a worker thread. A pure
policy with hysteresis, kept per loaded function by the Wasm tier (``router.wasm_tier``).

Handing a sub-millisecond call to a thread costs more than the call (the GIL moves between the loop thread and
the worker twice), so a function whose calls are quick runs inline. But a quick function's call is sometimes
slow for reasons that are not its own: the process was preempted, a collection ran, a neighbour held the GIL.
One such call must not send the calls after it through a thread hop, so the rules are asymmetric:

- **Into inline**: from threads, when the function's running figure (``typical_ms``, an EWMA of its calls) is
  below ``inline_below_ms``. With no figure yet (a new function) it runs on threads, where a slow guest cannot
  hold the loop.
- **Out of inline**: only after :data:`SLOW_STREAK` calls in a row took ``inline_below_ms`` or more, or at once
  when a call ran into its deadline (the guest itself is slow; the loop must not wait for it again). While it
  stays inline, one slow call holds the loop at most for its deadline.
- **Outsize requests**: the running figure is of the function's usual requests. A request whose input is
  more than :data:`OUTSIZE` times the usual input bytes (and past :data:`OUTSIZE_FLOOR_BYTES`), a batch of
  thousands where one row is usual, say, runs on a thread that once, whatever the placement: its time is not
  the figure's, and inline it would hold the event loop (health, metrics, every other function) for all of it.
  Where the next call runs is left as it was.
- ``inline_below_ms`` 0 (or less) turns inline execution off.
"""

from __future__ import annotations

import dataclasses

#: How many inline calls in a row must take ``inline_below_ms`` or more before a function moves to threads.
SLOW_STREAK = 3


@dataclasses.dataclass(frozen=True, slots=True)
class Placement:
    """Where the next call runs, and how many inline calls in a row have been slow."""

    inline: bool = False
    slow_streak: int = 0


THREADED = Placement()

#: A request with more than this many times the function's usual input bytes is outsize (see the module docstring).
OUTSIZE = 4
#: Inputs up to this size are never outsize: the spread of small requests (1 row or 8) is not worth a thread hop.
OUTSIZE_FLOOR_BYTES = 64 * 1024


def outsize(input_bytes: int, typical_bytes: float | None) -> bool:
    """Whether a request of ``input_bytes`` is outsize for a function whose usual input is ``typical_bytes``
    (None: no history, and then it runs on threads anyway)."""
    return typical_bytes is not None and input_bytes > max(OUTSIZE * typical_bytes, OUTSIZE_FLOOR_BYTES)


def runs_inline(typical_ms: float | None, inline_below_ms: float) -> bool:
    """The rule into inline: a function known to be quick (its running figure below ``inline_below_ms``)."""
    return typical_ms is not None and typical_ms < inline_below_ms


def first_placement(typical_ms: float | None, inline_below_ms: float) -> Placement:
    """Where a function just loaded runs its first call: by its figure, kept across scale to zero, if any."""
    return Placement(inline=True) if runs_inline(typical_ms, inline_below_ms) else THREADED


def next_placement(
    current: Placement, call_ms: float, typical_ms: float | None, timed_out: bool, inline_below_ms: float
) -> Placement:
    """Where the call after this one runs, given where this one ran (``current``), how long it took
    (``call_ms``), the function's running figure with it counted (``typical_ms``), and whether it ran into its
    deadline (``timed_out``). See the module docstring for the rules."""
    if inline_below_ms <= 0 or timed_out:
        return THREADED
    if not current.inline:
        return first_placement(typical_ms, inline_below_ms)
    if call_ms < inline_below_ms:
        return current if current.slow_streak == 0 else Placement(inline=True)
    streak = current.slow_streak + 1
    return THREADED if streak >= SLOW_STREAK else Placement(inline=True, slow_streak=streak)
