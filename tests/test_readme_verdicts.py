"""The CI check that a fresh default study says what the README says (`.ci/readme_verdicts.py`): it reads
the README's headline table, and it catches a changed verdict word."""

import importlib.util

from align_proxy.studies.analysis import analyse
from tests.conftest import REPO
from tests.test_analysis import MODELS, PRIMARY, TARGET, everywhere, planted_cells


def load_check():
    spec = importlib.util.spec_from_file_location("readme_verdicts", REPO / ".ci" / "readme_verdicts.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_readme_headline_table_parses_into_verdict_words():
    check = load_check()
    rows = check.readme_headline(check.README.read_text())
    assert set(rows) == {"sft", "dpo", "reward"}
    for row in rows.values():
        assert len(row["verdicts"]) == 3 and set(row["verdicts"]) <= check.VERDICTS
        assert row["transfers"] in {"yes", "no", "unclear"}


def test_a_changed_verdict_word_is_reported_and_equal_words_are_not():
    check = load_check()
    analysis = analyse(planted_cells("sft", {"a": everywhere(0.2)}), MODELS, PRIMARY, target=TARGET)
    found = check.report_headline(analysis.to_json())  # the check reads report.json
    assert found == {"sft": {"verdicts": ["helps", "helps", "helps"], "transfers": "yes"}}
    assert check.differences(found, found) == []
    changed = {"sft": {"verdicts": ["helps", "unclear", "helps"], "transfers": "yes"}}
    assert check.differences(changed, found) == [
        "sft: README says {'verdicts': ['helps', 'unclear', 'helps'], 'transfers': 'yes'}, this study says "
        "{'verdicts': ['helps', 'helps', 'helps'], 'transfers': 'yes'}"]
