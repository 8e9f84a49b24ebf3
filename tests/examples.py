"""How many examples the slowest property tests draw.

`make test` draws the counts given here; BATCHER_HYPOTHESIS_SCALE multiplies them
(`BATCHER_HYPOTHESIS_SCALE=4 make test` before a release, or after changing the code
one of them guards). They are the tests that compare a fast path with the plain code
it replaced, and each example costs tens of milliseconds of CPU.
"""

from __future__ import annotations

import os


def examples(count: int) -> int:
    """`count`, times BATCHER_HYPOTHESIS_SCALE (default 1), at least 1."""
    scale = float(os.environ.get("BATCHER_HYPOTHESIS_SCALE", "1") or "1")
    return max(1, round(count * scale))
