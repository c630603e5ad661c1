"""``python -m engine``: the UCI engine (same as ``mistral-chess-uci``)."""

import sys

from engine.uci import main

sys.exit(main())
