"""The documentation site builds with `mkdocs build --strict` (a broken link or a page left out of the navigation
fails it), and every console, bash and YAML block of the README and the docs parses against today's code
(docs/outputs.py); the checker itself catches a block that has drifted."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def load_outputs():
    spec = importlib.util.spec_from_file_location("docs_outputs", ROOT / "docs" / "outputs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(shutil.which("mkdocs") is None, reason="mkdocs is in the test extra: pip install -e '.[test]'")
def test_the_site_builds_with_strict_checks(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})  # Material's banner about MkDocs 2.0
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").exists()


def test_every_block_of_the_readme_and_the_docs_parses_against_the_code():
    report = load_outputs().run()
    assert report.checked > 20 and not report.problems, "\n".join(report.problems)


def test_the_check_names_a_block_that_drifted(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("\n".join([
        "```console", "72/72 cells done", "```",
        "```bash", "align-proxy study --jobz 2", "```",
        "```bash", "python recipes/dpo.py --config recipes/configs/dpo_ladder_cpu.yaml --betaa 0.1", "```",
        "```yaml", "models: [ladder-s, ladder-m]", "recipes: [{recipe: sfft}]", "```",
        "```", "an unlabelled block", "```",
        "```yaml", "learning_rate: 1.0e-4", "```",  # a recipe config that is right
    ]) + "\n")
    problems = load_outputs().run(files=[page]).problems
    assert len(problems) == 5, problems
    for expected in ("starts with the command", "--jobz", "--betaa", "sfft", "without a language"):
        assert any(expected in p for p in problems), (expected, problems)


def test_write_reruns_a_marked_block_and_keeps_the_others(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("<!-- output: regenerate -->\n```console\n$ align-proxy tasks\nstale output\n```\n\n"
                    "```console\n$ align-proxy study\nkept as written\n```\n")
    outputs = load_outputs()
    report = outputs.run(write=True, files=[page])
    text = page.read_text()
    assert report.rewritten == [f"{page}:2"] and not report.problems
    assert "stale output" not in text and "builtin:arith:" in text and "kept as written" in text
