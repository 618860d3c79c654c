"""Run the presenter from PsychoPy's Coder (or `python run_presenter.py rig.toml`).

Open this file in the Coder, set CONFIG below to your presenter config (or
pass the path as the first argument), and press Run.  The server's endpoint
comes from `connection.server` in the config.  Keys: `keys.pause` pauses and
resumes, `keys.quit` (escape) ends cleanly.  See docs/presenter.md.
"""

import logging
import os
import sys

CONFIG = "presenter.toml"   # a path, relative to this file's folder unless absolute

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.dirname(here))  # the checkout, when xdream-lab is not pip-installed
    from stimulus_client import config, runner

    path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, CONFIG)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = runner.run(config.load(path))
    print(f"presenter finished ({result.reason}): {result.shown} shown, {result.aborted} aborted, "
          f"{result.unacknowledged} reports unacknowledged")
