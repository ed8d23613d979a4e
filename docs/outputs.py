"""Keep the console blocks of the README and the docs true to the code.

    python docs/outputs.py            # check every block against the current code (tests/test_docs.py runs this)
    python docs/outputs.py --write    # also rerun the quick commands and replace what their blocks show

A block of a command and what it printed is fenced ```console and starts with its command on `$ ` lines (` \\` at a
line's end continues it). The line `<!-- output: regenerate -->` right above the fence marks a command that runs in
under a minute from the repository root: `--write` reruns it and replaces the output. Every other block (a study, a
training run) is checked without running: each `align-proxy ...`, recipe script (`python recipes/X.py`,
`accelerate launch ... recipes/X.py`, `align-proxy recipe X`) and spec file it names must parse against today's
parsers, and so must the commands of ```bash blocks. A ```yaml block that is a study spec (`models:` and
`recipes:`) must validate as one; any other must hold only keys some recipe takes, unless `<!-- yaml: fragment -->`
sits above it. A fence needs a language, so that output is never an unlabelled block.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
# Blocks are checked and rerun offline (`main`, `_plain_env`): a Hub lookup would only retry until it gives up.
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
REGENERATE = "<!-- output: regenerate -->"
FRAGMENT = "<!-- yaml: fragment -->"
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    marker: str  # the line right above the fence
    body: list[str]
    indent: str = ""

    @property
    def where(self) -> str:
        shown = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{shown}:{self.line}"

    def commands(self) -> list[str]:
        """The shell commands the block shows: a console block's `$ ` lines, a bash block's lines."""
        if self.language == "console":
            return _join_continued(_console_commands(self.body))
        return _join_continued([line for line in self.body if line.strip() and not line.lstrip().startswith("#")])


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    checked: int = 0
    rewritten: list[str] = field(default_factory=list)


def _console_commands(body: list[str]) -> list[str]:
    commands, open_command = [], False
    for line in body:
        if line.startswith("$ "):
            commands.append(line[2:])
            open_command = line.endswith("\\")
        elif open_command:
            commands.append(line)
            open_command = line.endswith("\\")
    return commands


def _join_continued(lines: list[str]) -> list[str]:
    """Shell lines joined into commands: ` \\` continues a line, and so does an open quote (`python -c '...`)."""
    joined, current = [], ""
    for line in lines:
        current += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\") and _quotes_closed(current):
            joined.append(current.strip())
            current = ""
        elif not line.endswith("\\"):
            current += "\n"
    return joined + ([current.strip()] if current.strip() else [])


def _quotes_closed(command: str) -> bool:
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def read_blocks(path: Path) -> list[Block]:
    blocks, lines, at = [], path.read_text().splitlines(), 0
    while at < len(lines):
        opening = FENCE.match(lines[at])
        if not opening:
            at += 1
            continue
        indent, language = opening.groups()
        end = next((i for i in range(at + 1, len(lines)) if lines[i].strip() == "```"), None)
        if end is None:
            raise SystemExit(f"{path.relative_to(ROOT)}:{at + 1}: a fence that never closes")
        marker = lines[at - 1].strip() if at else ""
        body = [line[len(indent):] if line.startswith(indent) else line for line in lines[at + 1:end]]
        blocks.append(Block(path, at + 1, language, marker, body, indent))
        at = end + 1
    return blocks


# --- checking a command against today's parsers --------------------------------------------------------

def command_problems(command: str) -> list[str]:
    """What in one shell line does not parse against the current code ([] when all of it does)."""
    problems = []
    for part in re.split(r"\s*(?:&&|\|\||;|\|)\s*", command):
        try:
            words = shlex.split(part, comments=True)
        except ValueError as err:
            problems.append(f"`{part}`: {err}")
            continue
        while words and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0]):  # VAR=value prefixes
            words.pop(0)
        if words:
            problems += [f"`{part}`: {p}" for p in _words_problems(words)]
    return problems


def _words_problems(words: list[str]) -> list[str]:
    program, rest = words[0], words[1:]
    if program == "align-proxy":
        return _cli_problems(rest)
    if program in ("python", "python3") and rest[:2] == ["-m", "align_proxy.cli"]:
        return _cli_problems(rest[2:])
    if program in ("python", "python3") and rest and rest[0].startswith("recipes/") and rest[0].endswith(".py"):
        return _recipe_problems(Path(rest[0]).stem, rest[1:])
    if program == "accelerate" and rest[:1] == ["launch"]:
        return _launch_problems(rest[1:])
    if program in ("python", "python3") and rest and rest[0].endswith(".py"):
        script = ROOT / rest[0]
        return [] if script.exists() or not rest[0].startswith(("benchmarks/", "docs/", ".ci/")) else \
            [f"{rest[0]} does not exist"]
    return []  # python -m pytest, pip, shell tools: not ours to check


def _cli_problems(argv: list[str]) -> list[str]:
    from align_proxy.cli import build_parser

    parsed, problem = _parse(build_parser(), argv)
    if problem or parsed is None:  # None: --help, which argparse answers by exiting
        return [problem] if problem else []
    if parsed.command == "recipe" and parsed.name:
        return _recipe_problems(parsed.name, parsed.args)
    if parsed.command == "study" and parsed.spec:
        return _spec_file_problems(parsed.spec)
    return []


def _launch_problems(argv: list[str]) -> list[str]:
    script = next((i for i, word in enumerate(argv) if word.endswith(".py")), None)
    if script is None:
        return ["accelerate launch without a script"]
    flags, problems = argv[:script], []
    if "--config_file" in flags:
        config = flags[flags.index("--config_file") + 1]
        if "$" not in config and not _find(config):
            problems.append(f"--config_file {config} does not exist")
    name = Path(argv[script]).stem
    return problems + (_recipe_problems(name, argv[script + 1:]) if "recipes" in argv[script] else [])


def _recipe_problems(recipe: str, argv: list[str]) -> list[str]:
    from align_proxy.kinds import KINDS
    from align_proxy.recipe_arguments import make_parser

    if recipe not in KINDS:
        return [f"no recipe {recipe} (recipes: {', '.join(KINDS)})"]
    parser, argv, problems = make_parser(recipe), list(argv), []
    if "--config" in argv:
        at = argv.index("--config")
        named = argv[at + 1] if at + 1 < len(argv) else ""
        config = _find(named) if named else None
        if config is None and "$" in named:
            pass  # a path through a shell variable ($R/configs/...): the reader's shell resolves it
        elif config is None:
            problems.append(f"--config {named} does not exist" if named else "--config without a file")
        else:
            problems += _config_problems(yaml.safe_load(config.read_text()) or {}, [parser], str(config))
        del argv[at:at + 2]
    # Flag names, types and choices, read by argparse alone: building the dataclasses would also apply
    # device checks (bf16 on a CPU machine) that say nothing about whether the command is right.
    parsed, problem = _parse(parser, argv, plain=True)
    return problems + ([problem] if problem else [])


def _config_problems(config: dict, parsers: list, where: str) -> list[str]:
    known = {action.dest for parser in parsers for action in parser._actions} | {"env"}
    unknown = sorted(set(config) - known)
    return [f"{where}: key(s) no recipe takes: {', '.join(unknown)}"] if unknown else []


def _spec_file_problems(spec: str) -> list[str]:
    """A spec the project has (a shipped one, or a file in the checkout) must validate; one a block names as the
    reader's own (`my_study.yaml`) is theirs to write."""
    path = _find(spec)
    return _spec_problems(path) if path else []


def _spec_problems(path: Path) -> list[str]:
    """load_spec's complaint about a spec, its lm-eval tasks checked by name only: whether a Hub task's data is in
    this machine's cache says nothing about whether the block is right."""
    from unittest import mock

    from align_proxy.errors import UserInputError
    from align_proxy.evals.lm_harness import split_tasks
    from align_proxy.studies import spec as spec_module

    try:
        with mock.patch.object(spec_module, "check_lm_eval_tasks", lambda tasks, _: split_tasks(tasks) if tasks else []):
            spec_module.load_spec(path)
    except UserInputError as err:
        return [str(err).replace(str(path), "the spec")]
    return []


def _find(path: str) -> Path | None:
    from align_proxy.install import shipped_file

    for candidate in (ROOT / path, Path(path)):
        if candidate.is_file():
            return candidate
    return shipped_file(path)


def _parse(parser: argparse.ArgumentParser, argv: list[str], plain: bool = False):
    """argparse's verdict on `argv` without exiting: (namespace, None) or (None, its error message)."""
    def refuse(message):
        raise _ParseError(message)

    parsers = [parser] + [sub for action in parser._actions if isinstance(action, argparse._SubParsersAction)
                          for sub in action.choices.values()]
    saved = [p.error for p in parsers]
    for p in parsers:
        p.error = refuse
    try:
        parse = argparse.ArgumentParser.parse_args if plain else type(parser).parse_args
        with contextlib.redirect_stdout(io.StringIO()):  # --help would print the whole help
            return parse(parser, argv), None
    except _ParseError as err:
        return None, str(err)
    except SystemExit:  # --help and --version exit 0 after printing
        return None, None
    finally:
        for p, error in zip(parsers, saved):
            p.error = error


class _ParseError(Exception):
    pass


# --- the blocks ---------------------------------------------------------------------------------------------

def check_block(block: Block) -> list[str]:
    if not block.language:
        return ["a fence without a language: ```console for a command and its output (its `$ ` command first), "
                "```text for anything else"]
    if block.language == "console":
        if not block.body or not block.body[0].startswith("$ "):
            return ["a console block starts with the command that printed it, on a `$ ` line"]
        return [p for command in block.commands() for p in command_problems(command)]
    if block.language in ("bash", "sh", "shell"):
        return [p for command in block.commands() for p in command_problems(command)]
    if block.language == "yaml" and block.marker != FRAGMENT:
        return _yaml_problems(block)
    return []


def _yaml_problems(block: Block) -> list[str]:
    try:
        data = yaml.safe_load("\n".join(block.body))
    except yaml.YAMLError as err:
        return [f"not YAML: {err}"]
    if not isinstance(data, dict):
        return [f"not a mapping; mark a snippet with {FRAGMENT} above the fence"]
    if {"models", "recipes"} <= set(data):
        with tempfile.TemporaryDirectory() as tmp:  # a spec's relative configs resolve from the root too
            spec = Path(tmp) / "spec.yaml"
            spec.write_text("\n".join(block.body))
            return _spec_problems(spec)
    from align_proxy.kinds import KINDS
    from align_proxy.recipe_arguments import make_parser

    problems = _config_problems(data, [make_parser(recipe) for recipe in KINDS], "config")
    return [f"{p}; mark a snippet of something else with {FRAGMENT} above the fence" for p in problems]


def regenerate(block: Block, timeout: float = 120) -> list[str]:
    """Rerun a marked block's commands from the repository root; the new body (commands, then what they print)."""
    body = []
    for command in block.commands():
        done = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                              env=_plain_env())
        if done.returncode not in (0, 1, 2):
            raise SystemExit(f"{block.where}: `{command}` failed ({done.returncode}):\n{done.stderr[-2000:]}")
        body += [f"$ {command}", *(done.stdout + done.stderr).rstrip("\n").splitlines()]
    return body


def _plain_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "FORCE_COLOR", "TERM")}
    return {**env, **OFFLINE, "NO_COLOR": "1", "TQDM_DISABLE": "1"}


def rewrite(path: Path, blocks: list[tuple[Block, list[str]]]) -> None:
    lines = path.read_text().splitlines()
    for block, body in sorted(blocks, key=lambda pair: -pair[0].line):  # from the end, so line numbers hold
        start, end = block.line, block.line + len(block.body)
        lines[start:end] = [block.indent + line if line else line for line in body]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines) + "\n")
    tmp.replace(path)


def run(write: bool = False, files: list[Path] | None = None) -> Report:
    report = Report()
    for path in files or doc_files():
        blocks = read_blocks(path)
        new = []
        for block in blocks:
            report.checked += 1
            report.problems += [f"{block.where}: {p}" for p in check_block(block)]
            if write and block.marker == REGENERATE and block.language == "console":
                body = regenerate(block)
                if body != block.body:
                    new.append((block, body))
                    report.rewritten.append(block.where)
        if new:
            rewrite(path, new)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rerun the blocks marked regenerate and rewrite them")
    parser.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md and docs/**/*.md)")
    args = parser.parse_args(argv)
    for key, value in OFFLINE.items():
        os.environ.setdefault(key, value)
    report = run(args.write, [f.resolve() for f in args.files] or None)
    for where in report.rewritten:
        print(f"rewrote {where}")
    for problem in report.problems:
        print(problem)
    print(f"{report.checked} blocks checked, {len(report.problems)} problem(s)")
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
