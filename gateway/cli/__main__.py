"""``python -m gateway.cli``: the ``wasm`` command, as the local scaler starts runners."""

import logging
import sys

from gateway.cli.main import main

logging.basicConfig()
sys.exit(main())
