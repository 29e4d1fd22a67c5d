"""Ray job entrypoint: fit a trained IceCube model's κ calibration on held-out events → MODEL/calibration.json
(or, with several --model and --out, an ensemble's → an ensemble artefact at OUT).

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/icecube_calibrate.py --help

Arguments are those of `neutrino-ray icecube calibrate`. Connects to the cluster through RAY_ADDRESS, which
`ray job submit` sets for the driver.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the working dir, when not installed

from neutrino_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["icecube", "calibrate", *sys.argv[1:]]))
