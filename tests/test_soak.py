"""The soak bench's one-minute version (bench/soak.py): a real gateway under a minute of mixed traffic, hostile
functions and malformed bodies included, with every answer checked by what its request was."""

from __future__ import annotations

import pytest

from bench import soak

pytestmark = pytest.mark.e2e

#: Caps the run for a fast machine; at the rates a 2-core machine reaches, the minute ends first.
MAX_REQUESTS = 50_000


def test_one_minute_soak_has_no_unexpected_answers_and_no_leak() -> None:
    """No timing is asserted: not the request rate, not latency, not the duration.

    Asserted: zero unexpected answers (every status and result was the one its request must get), no traceback
    in the gateway's log, and the report names each target. The memory and descriptor bounds are loose on
    purpose: one minute on a noisy 2-core CI machine leaves a 6 s warm-up, while pools, onnxruntime's arenas
    and the allocator may still be settling, so the 10-minute bench's targets (RSS growth < 10 %, fds within a
    few of the baseline) would flap. The leaks these bounds are after are large: a discarded memory-bomb
    instance kept alive holds 16 MiB and is sent several times a second, and a descriptor leaked per request
    or per discarded instance would add thousands in a minute. So RSS may grow by up to 50 % over its figure
    after the warm-up, and the fds may end at most 16 above theirs (the client's keep-alive connections may be
    reopened)."""
    result = soak.run(duration=60, max_requests=MAX_REQUESTS)
    text = soak.report(result)

    assert result.unexpected == 0, text
    assert result.tracebacks == 0, text
    assert not result.interrupted
    classes = {cls for cls, _, _ in result.by_kind}
    assert classes == {"healthy", "hostile", "malformed"}, text
    assert "unexpected errors: 0 (target 0): holds" in text
    assert "RSS growth: " in text
    assert "fds stable: " in text
    assert len(result.samples) >= 2, text

    assert result.rss_growth < 0.5, text
    assert result.end["fds"] <= result.baseline["fds"] + 16, text
