"""Ray job entrypoint: the information bound (max-likelihood directions under the simulator's own model).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/icecube_bound.py --help

Arguments are those of `neutrino-ray icecube bound`. Connects to the cluster through RAY_ADDRESS, which
`ray job submit` sets for the driver.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the working dir, when not installed

from neutrino_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["icecube", "bound", *sys.argv[1:]]))
