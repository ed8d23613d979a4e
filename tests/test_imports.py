"""The house rules, checked on the code as it stands: imports point down (no module reaches, directly or
through others, back to itself, function-level imports included); data flows one way, so nothing outside
`align_proxy.studies` imports it but the CLI and the cell entry points; the torch-free modules stay torch-free;
and no file grows past what a reader holds in the head."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO

# The checkout's folders and the package each installs as (pyproject.toml's package-dir).
FOLDERS = {"align_proxy": "align_proxy", "evals": "align_proxy.evals", "rewards": "align_proxy.rewards"}


def _module_name(folder: str, path: Path) -> str:
    parts = [FOLDERS[folder], *path.relative_to(REPO / folder).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(folder, p): p for folder in FOLDERS for p in (REPO / folder).rglob("*.py")
            if "metrics" not in p.relative_to(REPO).parts}  # shipped `evaluate` scripts load by path


def _resolve(name: str, known: set[str]) -> str | None:
    """The project module an import names (its longest known prefix), or None for a third-party one."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Nodes under `if TYPE_CHECKING:`: imports for annotations, which never run, so they point nowhere."""
    guarded = [n for n in ast.walk(tree) if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test)]
    return {id(inner) for n in guarded for stmt in n.body for inner in ast.walk(stmt)}


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports anywhere in its body (a package's `__init__` excluded as a
    target when the import names a submodule: `from a.b import c` imports `a.b.c` if that is a module)."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text())
        annotations_only = _type_checking_only(tree)
        for node in ast.walk(tree):
            if id(node) in annotations_only:
                continue
            if isinstance(node, ast.Import):
                found = [_resolve(alias.name, known) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                found = [_resolve(f"{base}.{alias.name}", known) for alias in node.names] or [_resolve(base, known)]
            else:
                continue
            targets |= {t for t in found if t and t != name}
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_sees_a_function_level_cycle():
    assert find_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_imports_itself_through_others():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_scoring_sits_below_both_evals_and_rewards():
    graph = import_graph()
    assert not any(t.startswith(("align_proxy.evals", "align_proxy.rewards")) for t in graph["align_proxy.scoring"])
    assert not any(t.startswith("align_proxy.evals") for m, targets in graph.items()
                   if m.startswith("align_proxy.rewards") for t in targets)


@pytest.mark.parametrize("module", ["align_proxy.metrics", "align_proxy.kinds", "align_proxy.run_metrics",
                                   "align_proxy.studies.store"])
def test_tables_and_records_import_without_torch(module):
    code = f"import sys, {module}; bad = {{'torch', 'trl', 'transformers'}} & set(sys.modules); print(sorted(bad))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_a_judge_spec_is_checked_without_torch():
    """A study's coordinator checks its judge's reward spec before any cell runs; only a loaded reward model needs
    torch and transformers (TRL's own reward functions are imported, not its trainers)."""
    code = ("import sys; from align_proxy.rewards import check_reward_spec; check_reward_spec('arith_exact_match'); "
            "print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


# What may import the study pipeline from outside it: the command line, which drives it, and the entry modules a
# study cell runs (they are the study's own processes).
STUDY_IMPORTERS = ("align_proxy.cli", "align_proxy.cells")
# A file past this many lines is usually two ideas (../STYLE.md's ~400, with room for docstrings).
MAX_LINES = 450


def test_only_the_cli_and_the_cell_entry_points_import_the_studies():
    reaching_back = {module: sorted(t for t in targets if t.startswith("align_proxy.studies"))
                     for module, targets in import_graph().items()
                     if not module.startswith(("align_proxy.studies", *STUDY_IMPORTERS))}
    assert {m: t for m, t in reaching_back.items() if t} == {}


def test_the_rule_sees_a_producer_importing_the_analysis():
    graph = {"align_proxy.proxy_tuning": {"align_proxy.studies.analysis"}, "align_proxy.cli": {"align_proxy.studies"}}
    offenders = [m for m, targets in graph.items() if not m.startswith(("align_proxy.studies", *STUDY_IMPORTERS))
                 and any(t.startswith("align_proxy.studies") for t in targets)]
    assert offenders == ["align_proxy.proxy_tuning"]


def test_no_file_is_longer_than_a_reader_holds_at_once():
    folders = ("align_proxy", "evals", "rewards", "recipes", "benchmarks", "tests", ".ci")
    lengths = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for folder in folders
               for p in (REPO / folder).rglob("*.py")}
    assert {path: n for path, n in lengths.items() if n > MAX_LINES} == {}


def imported_test_modules(tree: ast.Module) -> list[str]:
    """The test modules a file imports (`test_x`, `tests.test_x` or `from tests import test_x`, anywhere in it)."""
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names += ([f"tests.{alias.name}" for alias in node.names] if node.module in ("tests", None)
                      else [node.module])
    return sorted(n for n in names if n.removeprefix("tests.").split(".")[0].startswith("test_"))


def test_no_test_file_imports_another():
    """Shared builders live in tests/support.py and fixtures in conftest.py: a test file that imports another
    runs that file's module again (under a second name when the import styles differ) and ties the two together."""
    importing = {p.name: imported_test_modules(ast.parse(p.read_text())) for p in sorted((REPO / "tests").glob("*.py"))}
    assert {name: found for name, found in importing.items() if found} == {}


def test_the_rule_sees_a_test_file_importing_another():
    tree = ast.parse("import support\nfrom support import REPO\nfrom test_speed import parse\n"
                     "def f():\n    import tests.test_analysis\n    from tests import test_safe_load\n")
    assert imported_test_modules(tree) == ["test_speed", "tests.test_analysis", "tests.test_safe_load"]
