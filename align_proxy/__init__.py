"""align-proxy: post-training recipes on small proxy models, evaluated before and after, and transfer studies
that ask whether a recipe's gain on a small proxy holds on larger ones."""

from pathlib import Path

# The source checkout: recipe scripts (recipes/), their configs, and the study specs resolve against it.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
