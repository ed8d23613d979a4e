"""The shipped local lm-eval task `arith_mc` (arith_mc.yaml): the built-in arithmetic task's held-out problems as
four-way multiple choice, the gold answer among three of the mistakes a learner makes. It runs offline and needs
no Hub; the study tests and the lm-eval guide's offline example (docs/guides/lm-eval.md) score it.

`load` is the YAML's `custom_dataset`: it reads arith_mc.jsonl next to this file, wherever the package is
installed (a `data_files` path in a YAML is read relative to the working directory). `python
evals/lm_eval_tasks/arith_mc.py` writes that file again from the built-in task; a test checks it is current.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA = Path(__file__).with_name("arith_mc.jsonl")
ITEMS = 200
CHOICES = 4


def build_items(n: int = ITEMS, seed: int = 0) -> list[dict]:
    """`n` held-out problems of builtin:arith, each with its gold answer and three distinct wrong ones, shuffled."""
    from align_proxy.data.tasks import get_task

    task = get_task("arith")
    rng = random.Random(f"arith_mc/{seed}")  # a string seed is hashed stably across runs
    items = []
    for _ in range(n):
        problem = task.sample(rng, heldout=True)
        choices = [problem.answer]
        while len(choices) < CHOICES:
            wrong = task.mistake(problem, rng)
            # A problem with few plausible mistakes falls back to nearby numbers.
            wrong = wrong if wrong not in choices else str(int(choices[-1]) + rng.randint(1, 9))
            if wrong not in choices:
                choices.append(wrong)
        rng.shuffle(choices)
        items.append({"question": problem.prompt, "choices": choices, "label": choices.index(problem.answer)})
    return items


def load(**_metadata):
    """The task's dataset (lm-eval passes its metadata as keyword arguments; none is needed here)."""
    import datasets

    return datasets.load_dataset("json", data_files={"test": str(DATA)})


if __name__ == "__main__":
    tmp = DATA.with_name(f".{DATA.name}.tmp")
    tmp.write_text("".join(json.dumps(item) + "\n" for item in build_items()))
    tmp.replace(DATA)
    print(f"wrote {ITEMS} items to {DATA}")
