"""Ray job entrypoint: batch inference (LineFit, a trained model, or an ensemble of them) → OUT/submission.csv.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- python jobs/icecube_predict.py --help

Arguments are those of `neutrino-ray icecube predict`. Connects to the cluster through RAY_ADDRESS, which
`ray job submit` sets for the driver.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the working dir, when not installed

from neutrino_ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["icecube", "predict", *sys.argv[1:]]))
