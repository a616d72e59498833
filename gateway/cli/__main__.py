"""``python -m gateway.cli``: the ``wasm`` command, as the local scaler starts runners. Logging is set up by
the command itself, as with the ``wasm`` script (``serve`` and ``runner`` at the level of setting
``log_level``)."""

import sys

from gateway.cli.main import main

sys.exit(main())
