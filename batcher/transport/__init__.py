"""HTTP plumbing for the provider clients."""

import sys

# httpx imports its command-line tool (and with it rich and pygments, a third of
# httpx's import time) unless that import fails, which httpx handles by design.
# batcher never uses that tool: a None entry makes the import fail at no cost.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]
