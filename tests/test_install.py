"""An install works outside the repository: a wheel carries the recipes and their configs, and from an empty
directory `align-proxy study` runs a 2-cell study and `align-proxy recipe` runs a recipe."""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from align_proxy.install import recipes_dir, resolve_config_flags, shipped_file
from support import REPO

SOURCES = ["align_proxy", "recipes", "rewards", "evals", "pyproject.toml", "README.md"]


def test_every_package_folder_is_in_the_wheels_package_list():
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {"align_proxy": "align_proxy", **{v: k for k, v in setuptools["package-dir"].items()}}
    found = {".".join([folders[top], *p.parent.relative_to(REPO / top).parts]) for top in folders
             for p in (REPO / top).rglob("__init__.py")}
    assert found <= set(setuptools["packages"]), f"add {sorted(found - set(setuptools['packages']))} to [tool.setuptools] packages"


def test_checkout_relative_config_paths_name_the_shipped_files():
    assert recipes_dir() == REPO / "recipes"
    expected = REPO / "recipes" / "configs" / "sft_ladder_cpu.yaml"
    assert shipped_file("recipes/configs/sft_ladder_cpu.yaml") == shipped_file("sft_ladder_cpu.yaml") == expected
    assert shipped_file("no_such.yaml") is None
    resolved = resolve_config_flags(["--config", "sft_ladder_cpu.yaml", "--x", "y"])
    assert resolved == ["--config", str(expected), "--x", "y"]


def run(args: list, cwd: Path, env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def see_running_environment(python: Path, env: dict) -> None:
    """Let the fresh virtual environment of `python` import what this interpreter's environment has installed, by
    a .pth file of plain paths to its site-packages. Not `venv --system-site-packages`: run from a virtual
    environment, that sees the base interpreter's packages, not this environment's. A plain path line adds its folder
    and nothing else: the .pth files in it are not run, so this environment's editable install of align_proxy (a
    finder that one of them installs) stays out, and the wheel's copy is the only align_proxy there is."""
    folders = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], python.parent,
                  env).stdout.strip()
    Path(purelib, "running_environment.pth").write_text("".join(f"{f}\n" for f in folders if Path(f).is_dir()))


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A wheel built from this checkout, installed (not editable) into a fresh virtual environment that reuses the
    running environment's installed dependencies; the environment its commands run in (no PYTHONPATH, offline)."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "src"
    source.mkdir()
    for name in SOURCES:  # a copy: building writes build/ and *.egg-info beside the sources
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INDEX="1", OMP_NUM_THREADS="1")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", source],
        tmp, env)
    wheel = next((tmp / "dist").glob("align_proxy-*.whl"))
    venv = tmp / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, env)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-build-isolation",
         "--force-reinstall", wheel], tmp, env)
    see_running_environment(python, env)  # after: pip never sees, let alone replaces, this environment's install
    empty = tmp / "empty"
    empty.mkdir()
    return {"python": python, "cli": venv / "bin" / "align-proxy", "env": env, "cwd": empty, "venv": venv,
            "wheel": wheel}


@pytest.mark.slow  # builds and installs a wheel, ~10 s
def test_the_wheel_installs_one_top_level_package(installed):
    """`evals` and `rewards` are names taken on PyPI: they install inside align_proxy, never beside it."""
    wheel = zipfile.ZipFile(installed["wheel"])
    tops = {name.split("/")[0] for name in wheel.namelist() if not name.split("/")[0].endswith(".dist-info")}
    assert tops == {"align_proxy"}, tops
    assert wheel.read(next(n for n in wheel.namelist() if n.endswith("top_level.txt"))).decode().split() == ["align_proxy"]
    out = run([installed["python"], "-c", "import align_proxy.evals.suite as e, align_proxy.rewards as r; "
               "print(e.__file__); print(r.get_reward('rewards.arith:exact_match').__module__)"],
              installed["cwd"], installed["env"]).stdout.split()
    assert out[0].startswith(str(installed["venv"])) and out[1] == "align_proxy.rewards.arith", out


@pytest.mark.slow  # builds and installs a wheel, ~10 s
def test_the_installed_package_is_the_wheel_with_its_recipes(installed):
    script = ("import align_proxy.install as i, align_proxy.studies.spec as s\n"
              "print(i.__file__)\nprint(i.recipes_dir())\n"
              "specs = (None, s.DEFAULT_SPEC.with_name('rlhf.yaml'))  # the shipped specs\n"
              "print([p.config for f in specs for p in s.load_spec(f).recipes])\n"
              "import align_proxy.evals.lm_harness as h  # the shipped lm-eval task and its data, read where the wheel put them\n"
              "print(h.SHIPPED_TASKS)\nprint(h.task_names('arith_mc'))\n"
              "import sys  # what of this environment's editable install made it in: its finder, or the checkout\n"
              f"print(sorted(m for m in sys.modules if m.startswith('__editable__')), {str(REPO)!r} in sys.path)\n"
              "import align_proxy.chat_template as c  # the shipped chat template, by name\n"
              "print(c.resolve_chat_template('minimal'))")
    out = run([installed["python"], "-c", script], installed["cwd"], installed["env"]).stdout.splitlines()
    venv = str(installed["venv"])
    assert out[0].startswith(venv) and out[1].startswith(venv), out  # not the checkout's, not an editable install
    configs = eval(out[2])  # noqa: S307 - our own printed list of paths
    assert configs and all(c.startswith(venv) for c in configs)
    assert out[3].startswith(venv) and out[4] == "['arith_mc']", out
    assert out[5] == "[] False", out
    assert out[6].startswith(venv) and out[6].endswith("chat_templates/minimal.jinja"), out


@pytest.mark.slow  # a study and a recipe in fresh processes, ~30 s
def test_a_two_cell_study_and_a_recipe_run_from_an_empty_directory(installed, tiny_ladder):
    cwd, env = installed["cwd"], installed["env"]
    spec = {"name": "anywhere", "output_dir": "anywhere", "models": [r.path for r in tiny_ladder], "seeds": [0],
            "evaluation": {"eval_size": 16, "builtin_train_size": 64, "builtin_test_size": 16},
            "recipes": [{"recipe": "sft", "config": "recipes/configs/sft_ladder_cpu.yaml", "grid": {"max_steps": [2]}}]}
    (cwd / "spec.yaml").write_text(yaml.safe_dump(spec))
    study = run([installed["cli"], "study", "spec.yaml", "--jobs", "2", "--no-report"], cwd, env)
    assert "2/2 cells done" in study.stdout, study.stdout
    assert all((cell / "model.safetensors").exists() for cell in (cwd / "anywhere" / "cells").iterdir())
    assert str(installed["venv"]) in next((cwd / "anywhere" / "cells").glob("*/command.txt")).read_text()

    run([installed["cli"], "recipe", "sft", "--config", "sft_ladder_cpu.yaml", "--model_name_or_path",
         tiny_ladder[0].path, "--output_dir", "sft-out", "--max_steps", "2", "--builtin_train_size", "64",
         "--eval_size", "16"], cwd, env)
    assert (cwd / "sft-out" / "model.safetensors").exists() and (cwd / "sft-out" / "metrics.json").exists()
