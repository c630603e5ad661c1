"""``python -m training ...`` = ``mistral-chess ...`` (handy under ``accelerate launch -m training train``)."""

import sys

from engine.cli import main

sys.exit(main(sys.argv[1:]))
