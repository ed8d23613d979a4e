"""The generated reference pages (docs/reference/*.md): committed as the code makes them now, and covering every
`align-proxy` command and flag, study spec key, metric and recipe flag, checked against the code's own objects and
error messages rather than the generator's walk. Building the pages imports TRL (seconds, most of this file's time)."""

from __future__ import annotations

import argparse
import importlib.util
import re
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
RERUN = "run `python docs/reference.py` and commit docs/reference/"


@pytest.fixture(scope="module")
def reference():
    """docs/reference.py as a module (docs/ is no package)."""
    spec = importlib.util.spec_from_file_location("docs_reference", ROOT / "docs" / "reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


@pytest.fixture(scope="module")
def pages(reference) -> dict[str, str]:
    generated, problems = reference.generate()
    assert not problems, "\n".join(problems)
    return generated


def sections(page: str) -> dict[str, str]:
    """A page's `## ` sections by their heading, and by their `{#id}` where the heading has one."""
    out = {}
    for chunk in page.split("\n## ")[1:]:
        heading, _, body = chunk.partition("\n")
        out[heading] = body
        anchor = re.search(r"\{#([\w-]+)\}", heading)
        if anchor:
            out[anchor.group(1)] = body
    return out


def test_committed_pages_are_what_the_code_generates(reference, pages):
    versions_differ = reference.library_versions() not in (ROOT / "docs/reference/recipe-flags.md").read_text()
    for name, text in pages.items():
        if name == "recipe-flags.md" and versions_differ:
            continue  # TRL's and transformers' own flags differ between versions; the page names the ones it read
        committed = ROOT / "docs" / "reference" / name
        assert committed.exists() and committed.read_text() == text, f"docs/reference/{name} is stale: {RERUN}"
    if versions_differ:
        pytest.skip(f"recipe-flags.md was generated with other TRL/transformers versions than "
                    f"{reference.library_versions()}; the other pages match")


def _help_of(command: str, capsys) -> str:
    from align_proxy.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"] if command else ["--help"])
    return capsys.readouterr().out


def test_every_command_and_flag_has_an_entry(pages, capsys):
    top = _help_of("", capsys)
    commands = re.search(r"\{([\w,-]+)\}", top).group(1).split(",")  # as argparse's own usage line lists them
    body = sections(pages["cli.md"])
    assert "`--debug`" in body["Options of `align-proxy`"]
    for command in commands:
        section = body.get(f"`align-proxy {command}`")
        assert section is not None, f"align-proxy {command} has no section in cli.md: {RERUN}"
        help_text = _help_of(command, capsys)
        options = {o for line in re.findall(r"^  (-\S.*?)(?:  |$)", help_text, re.M)
                   for o in re.findall(r"--[\w-]+", line)} - {"--help", "--debug"}
        positionals = re.findall(r"^  ([^\s-]\S*)", help_text.split("positional arguments:")[-1].split("\n\n")[0],
                                 re.M) if "positional arguments:" in help_text else []
        names = {n for p in positionals for n in (p.strip("{}").split(",") if p.startswith("{") else [p])}
        for name in options | names:
            assert f"`{name}`" in section, f"align-proxy {command} {name} has no entry in cli.md: {RERUN}"


# A spec with one unknown key in each place that takes a fixed set, and the page section listing that set.
BASE = {"models": ["ladder-s", "ladder-m"], "recipes": [{"recipe": "sft"}]}
PLACES = {
    "top": {**BASE, "bogus_key": 1},
    "recipe": {**BASE, "recipes": [{"recipe": "sft", "bogus_key": 1}]},
    "launch": {**BASE, "recipes": [{"recipe": "sft", "launch": {"bogus_key": 1}}]},
    "start_from": {**BASE, "recipes": [{"recipe": "sft"}, {"recipe": "dpo", "start_from": {"bogus_key": 1}}]},
    "reward_from": {**BASE, "recipes": [{"recipe": "reward"}, {"recipe": "grpo", "reward_from": {"bogus_key": 1}}]},
    "slurm": {**BASE, "recipes": [{"recipe": "sft", "slurm": {"bogus_key": 1}}]},
    "best_of_n": {**BASE, "recipes": [{"recipe": "reward", "best_of_n": {"bogus_key": 1}}]},
    "judge_cell": {**BASE, "evaluation": {"judge": {"bogus_key": 1}}},
    "evaluation": {**BASE, "evaluation": {"bogus_key": 1}},
}


@pytest.mark.parametrize("place", PLACES)
def test_every_spec_key_has_an_entry(place, pages, tmp_path):
    from align_proxy.studies.spec import StudySpecError, load_spec

    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(PLACES[place]))
    with pytest.raises(StudySpecError) as error:
        load_spec(path)
    # The keys the spec check itself offers the user, read from its message.
    allowed = re.search(r"(?:keys must be one of|allowed:) (.+)$", str(error.value)).group(1).split(", ")
    section = sections(pages["study-spec.md"])[place]
    missing = [key for key in allowed if f"| `{key}` |" not in section]
    assert not missing, f"spec keys {missing} ({place}) have no entry in study-spec.md: {RERUN}"


def test_every_metric_and_recipe_kind_has_an_entry(pages):
    from align_proxy.kinds import KINDS
    from align_proxy.metrics import LM_EVAL_METRICS, METRICS

    page = pages["metrics.md"]
    for name in [*METRICS, *LM_EVAL_METRICS, *KINDS]:
        assert f"| `{name}` |" in page, f"{name} has no row in metrics.md: {RERUN}"
    for kind in KINDS.values():
        assert f"| `{kind.name}` | {kind.family} | `{kind.primary_metric}` |" in page


def test_every_recipe_flag_has_an_entry(pages):
    from align_proxy.kinds import KINDS
    from align_proxy.recipe_arguments import make_parser

    page, body = pages["recipe-flags.md"], sections(pages["recipe-flags.md"].replace("\n### ", "\n## "))
    for kind in KINDS.values():
        for action in make_parser(kind.name)._actions:
            if not isinstance(action, argparse._HelpAction):
                assert f"`{action.option_strings[0]}`" in page, f"{kind.name} {action.option_strings[0]}: {RERUN}"
        config = kind.config_class  # the fields its TRL config declares itself are in its own table
        for name in vars(config).get("__annotations__", {}):
            assert f"`--{name}`" in body[f"`{config.__name__}`"], f"{config.__name__}.{name}: {RERUN}"


def _committed_as_now(reference, monkeypatch, tmp_path, names):
    """Pages written as the code makes them now, in a folder the check reads in place of docs/reference/."""
    generated, _ = reference.generate(names)
    for name, text in generated.items():
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(reference, "OUT", tmp_path)


def test_a_new_flag_makes_the_cli_page_stale_and_is_named(reference, monkeypatch, tmp_path):
    from align_proxy import cli

    _committed_as_now(reference, monkeypatch, tmp_path, ["cli.md"])
    assert reference.check(["cli.md"]) == []
    build_parser = cli.build_parser

    def with_new_flag():
        parser = build_parser()
        parser.add_argument("--new-flag", action="store_true", help="a flag the page does not list yet")
        return parser
    monkeypatch.setattr(cli, "build_parser", with_new_flag)
    problems = reference.check(["cli.md"])
    assert len(problems) == 1 and "docs/reference/cli.md is stale" in problems[0] and "--new-flag" in problems[0]


def test_a_spec_key_without_a_description_is_named(reference, monkeypatch):
    from align_proxy.studies import spec

    monkeypatch.setattr(spec, "TOP_LEVEL_KEYS", spec.TOP_LEVEL_KEYS | {"new_key"})
    _, problems = reference.generate(["study-spec.md"])
    assert any("'new_key'" in problem and "SPEC_KEYS" in problem for problem in problems), problems


def test_a_metric_without_a_description_is_named(reference, monkeypatch):
    from align_proxy.metrics import METRICS, Metric

    monkeypatch.setitem(METRICS, "new_metric", Metric("new_metric", "a new metric", True))
    _, problems = reference.generate(["metrics.md"])
    assert any("'new_metric'" in problem and "no meaning" in problem for problem in problems), problems


def test_check_exits_1_naming_a_stale_page(reference, monkeypatch, tmp_path, capsys):
    _committed_as_now(reference, monkeypatch, tmp_path, None)
    assert reference.main(["--check"]) == 0
    (tmp_path / "metrics.md").write_text("edited by hand\n")
    assert reference.main(["--check"]) == 1
    assert "docs/reference/metrics.md is stale" in capsys.readouterr().out
