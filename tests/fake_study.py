"""`align-proxy` with the fake recipe kind registered (tests/fake_recipe.py): what a scheduling test runs in a
subprocess it can kill. `python tests/fake_study.py study spec.yaml --jobs 2`."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from align_proxy.cli import main  # noqa: E402
from tests.fake_recipe import register_fake  # noqa: E402

if __name__ == "__main__":
    register_fake()
    sys.exit(main(sys.argv[1:]))
