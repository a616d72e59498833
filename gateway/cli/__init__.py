"""The ``wasm`` command: its commands (:mod:`.main`), the registry commands, the admin client and the demo."""

import sys

# httpx imports its own command-line client (rich, click, pygments) whenever it is imported and those are
# installed, unless that import fails: about a quarter of a second of every `wasm` command and of every runner's
# start, for a client that nothing here runs. httpx falls back to a stub when `httpx._main` cannot be imported,
# which a None entry in sys.modules makes so (only if httpx is not imported yet: an importer that has it keeps it).
if "httpx" not in sys.modules and "httpx._main" not in sys.modules:
    sys.modules["httpx._main"] = None  # type: ignore[assignment]
