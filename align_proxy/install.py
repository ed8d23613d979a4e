"""Where the recipe scripts and their configs are, in a source checkout or in any install.

A checkout keeps them at the top level (`recipes/`, where `python recipes/sft.py` runs); an installed
package carries the same folder as `align_proxy/recipes` (mapped in pyproject.toml, one copy). Paths
the shipped specs and configs spell from the checkout's root (`recipes/configs/sft_ladder_cpu.yaml`)
resolve to the installed copy, so `align-proxy study` and `align-proxy recipe` work from any directory.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
RECIPES_PREFIX = "recipes/"


def recipes_dir() -> Path:
    """The folder holding `sft.py`, ..., `configs/` and `accelerate/`."""
    for candidate in (PACKAGE_DIR / "recipes", PACKAGE_DIR.parent / "recipes"):  # installed, then checkout
        if (candidate / "sft.py").is_file():
            return candidate
    raise FileNotFoundError(f"no recipe scripts next to {PACKAGE_DIR}: reinstall align-proxy (`pip install "
                            "align-proxy`, or `pip install -e .` in a checkout)")


def recipe_names() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.py") if not p.name.startswith("_"))


def shipped_file(path: str | Path) -> Path | None:
    """The shipped file a checkout-relative path names (`recipes/configs/x.yaml`, also `configs/x.yaml`
    or a bare `x.yaml` config name), or None when the package ships no such file."""
    text = str(path).replace("\\", "/")
    relative = text[len(RECIPES_PREFIX):] if text.startswith(RECIPES_PREFIX) else text
    for candidate in (recipes_dir() / relative, recipes_dir() / "configs" / relative):
        if candidate.is_file():
            return candidate
    return None


def resolve_config_flags(argv: list[str]) -> list[str]:
    """`--config` and `--config_file` values that do not exist here but name a shipped file, made absolute."""
    out = list(argv)
    for i, arg in enumerate(out):
        flag, eq, value = arg.partition("=")
        if flag not in ("--config", "--config_file"):
            continue
        if eq and not Path(value).exists() and shipped_file(value):
            out[i] = f"{flag}={shipped_file(value)}"
        elif not eq and i + 1 < len(out) and not Path(out[i + 1]).exists() and shipped_file(out[i + 1]):
            out[i + 1] = str(shipped_file(out[i + 1]))
    return out


def run_recipe(name: str, argv: list[str]) -> None:
    """Run `recipes/<name>.py` with `argv` in this process, exactly as `python recipes/<name>.py ...` would."""
    if name not in recipe_names():
        raise SystemExit(f"align-proxy recipe: unknown recipe {name!r}; available: {', '.join(recipe_names())}")
    script = recipes_dir() / f"{name}.py"
    sys.argv = [str(script), *resolve_config_flags(argv)]
    runpy.run_path(str(script), run_name="__main__")
