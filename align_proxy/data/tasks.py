"""Built-in synthetic tasks: one seeded definition yields every dataset a recipe needs.

A task knows how to draw problems, their gold answers and plausible mistakes. From that single
definition come the pretraining corpus of the offline ladder (with a share of mistakes, so base
models are imperfect), SFT demonstrations, preference pairs, RL prompts and held-out evaluation
sets, all as `datasets.Dataset` in TRL's standard (non-conversational) formats.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

from datasets import Dataset, DatasetDict

from align_proxy.errors import UnknownNameError

# Every split a recipe asks for, and the TRL format it comes in.
FORMATS = {
    "text": ("text",),
    "sft": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "rl": ("prompt", "answer"),
    "eval": ("prompt", "answer"),
}

_LEADING_INT = re.compile(r"\s*(-?\d+)")


@dataclass(frozen=True)
class Problem:
    a: int
    op: str
    b: int

    @property
    def prompt(self) -> str:
        return f"{self.a}{self.op}{self.b}="

    @property
    def value(self) -> int:
        return self.a + self.b if self.op == "+" else self.a - self.b

    @property
    def answer(self) -> str:
        return str(self.value)


def parse_answer(completion: str) -> str | None:
    """The integer a completion starts with, or None.

    >>> parse_answer("47"), parse_answer(" -3 and more"), parse_answer("x")
    ('47', '-3', None)
    """
    match = _LEADING_INT.match(completion)
    return match.group(1) if match else None


def parse_prompt(prompt: str) -> Problem:
    """Recover the problem from its prompt (`"12+35="`), so rewards need no side channel."""
    match = re.fullmatch(r"\s*(\d+)([+-])(\d+)=\s*", prompt)
    if match is None:
        raise ValueError(f"not an arithmetic prompt: {prompt!r} (expected e.g. '12+35=')")
    return Problem(int(match.group(1)), match.group(2), int(match.group(3)))


@dataclass(frozen=True)
class ArithmeticTask:
    """Multi-digit addition and subtraction with exact gold answers.

    Operands have 1 to `max_digits` digits, so the family spans problems any rung solves (1-digit)
    and problems only larger rungs get right (carries): base models have partial
    skill. A fixed eighth of the problem space is held out from every training split.
    """

    name: str = "arith"
    max_digits: int = 2
    ops: tuple[str, ...] = ("+", "-")
    # Share of pretraining lines that carry a plausible mistake instead of the gold answer.
    noise: float = 0.2
    # TRL's conversational format: each prompt one user message, each answer one assistant message (a chat template
    # renders them: --chat_template_path minimal on a base model). The same problems as the task named `draws`.
    chat: bool = False
    draws: str | None = None  # whose problems it poses (default: its own name)

    # --- problems -------------------------------------------------------------------------
    def is_heldout(self, problem: Problem) -> bool:
        digest = hashlib.blake2b(problem.prompt.encode(), digest_size=2).digest()
        return digest[0] % 8 == 0

    def sample(self, rng: random.Random, heldout: bool) -> Problem:
        while True:
            a = self._operand(rng)
            b = self._operand(rng)
            op = rng.choice(self.ops)
            if op == "-" and b > a:
                a, b = b, a
            problem = Problem(a, op, b)
            if self.is_heldout(problem) == heldout:
                return problem

    def _operand(self, rng: random.Random) -> int:
        digits = rng.randint(1, self.max_digits)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    def mistake(self, problem: Problem, rng: random.Random) -> str:
        """A wrong answer of the kind a learner makes: a dropped carry, one digit off, swapped
        digits, an off-by-ten, or the other operation."""
        gold = problem.value
        for _ in range(32):
            kind = rng.randrange(5)
            if kind == 0:
                wrong = _without_carry(problem)
            elif kind == 1:
                digits = list(str(gold))
                i = rng.randrange(len(digits))
                digits[i] = str((int(digits[i]) + rng.choice((1, 9))) % 10)
                wrong = int("".join(digits))
            elif kind == 2 and gold >= 10:
                digits = list(str(gold))
                i = rng.randrange(len(digits) - 1)
                digits[i], digits[i + 1] = digits[i + 1], digits[i]
                wrong = int("".join(digits))
            elif kind == 3:
                wrong = gold + rng.choice((-10, 10))
            else:
                wrong = problem.a - problem.b if problem.op == "+" else problem.a + problem.b
            if wrong != gold and wrong >= 0:
                return str(wrong)
        return str(gold + 1)

    def is_correct(self, prompt: str, completion: str) -> bool:
        return parse_answer(completion) == parse_prompt(prompt).answer

    # --- datasets -------------------------------------------------------------------------
    def _rng(self, kind: str, split: str, seed: int) -> random.Random:
        # String seeds are hashed with SHA-512 by `random`, so they are stable across runs.
        return random.Random(f"{self.draws or self.name}/{self.max_digits}/{kind}/{split}/{seed}")

    def _user(self, prompts: list[str]) -> list:
        return [[{"role": "user", "content": p}] for p in prompts] if self.chat else prompts

    def _assistant(self, answers: list[str]) -> list:
        return [[{"role": "assistant", "content": a}] for a in answers] if self.chat else answers

    def _problems(self, kind: str, split: str, n: int, seed: int) -> tuple[list[Problem], random.Random]:
        if split not in ("train", "test"):
            raise ValueError(f"unknown split {split!r}: use 'train' or 'test'")
        rng = self._rng(kind, split, seed)
        return [self.sample(rng, heldout=split == "test") for _ in range(n)], rng

    def pretraining_text(self, n: int, split: str = "train", seed: int = 0) -> Dataset:
        problems, rng = self._problems("text", split, n, seed)
        lines = [p.prompt + (self.mistake(p, rng) if rng.random() < self.noise else p.answer) for p in problems]
        return Dataset.from_dict({"text": lines})

    def sft(self, n: int, split: str = "train", seed: int = 0) -> Dataset:
        problems, _ = self._problems("sft", split, n, seed)
        return Dataset.from_dict({"prompt": self._user([p.prompt for p in problems]),
                                  "completion": self._assistant([p.answer for p in problems])})

    def preference(self, n: int, split: str = "train", seed: int = 0) -> Dataset:
        problems, rng = self._problems("preference", split, n, seed)
        return Dataset.from_dict(
            {
                "prompt": self._user([p.prompt for p in problems]),
                "chosen": self._assistant([p.answer for p in problems]),
                "rejected": self._assistant([self.mistake(p, rng) for p in problems]),
            }
        )

    def rl(self, n: int, split: str = "train", seed: int = 0) -> Dataset:
        problems, _ = self._problems("rl", split, n, seed)
        return Dataset.from_dict({"prompt": self._user([p.prompt for p in problems]),
                                  "answer": [p.answer for p in problems]})

    def evaluation(self, n: int, seed: int = 0) -> Dataset:
        """Held-out prompts with gold answers, for task accuracy by greedy generation."""
        problems, _ = self._problems("eval", "test", n, seed)
        return Dataset.from_dict({"prompt": self._user([p.prompt for p in problems]),
                                  "answer": [p.answer for p in problems]})

    def splits(self, fmt: str, n_train: int, n_test: int, seed: int = 0, eval_seed: int | None = None) -> DatasetDict:
        """Train and held-out test splits of one format (see `FORMATS`); the test split is drawn with
        `eval_seed` (default: `seed`), so runs with different training seeds can share their test items."""
        if fmt not in FORMATS:
            raise ValueError(f"unknown task format {fmt!r}: choose one of {sorted(FORMATS)}")
        make = {
            "text": self.pretraining_text,
            "sft": self.sft,
            "preference": self.preference,
            "rl": self.rl,
            "eval": lambda n, split, seed: self.evaluation(n, seed),
        }[fmt]
        test_seed = seed if eval_seed is None else eval_seed
        return DatasetDict(train=make(n_train, split="train", seed=seed), test=make(n_test, split="test", seed=test_seed))


def _without_carry(problem: Problem) -> int:
    """Digit-wise result that forgets every carry (or borrow): the classic arithmetic slip."""
    a, b = str(problem.a), str(problem.b).rjust(len(str(problem.a)), "0")
    a = a.rjust(len(b), "0")
    sign = 1 if problem.op == "+" else -1
    digits = [str((int(x) + sign * int(y)) % 10) for x, y in zip(a, b)]
    return int("".join(digits))


TASKS: dict[str, ArithmeticTask] = {
    "arith": ArithmeticTask(),
    # Harder: three-digit operands; the offline ladder's rungs barely solve it.
    "arith-3digit": ArithmeticTask(name="arith-3digit", max_digits=3),
    # builtin:arith's problems in TRL's conversational format, for chat templates and chat-format evaluation.
    "arith-chat": ArithmeticTask(name="arith-chat", chat=True, draws="arith"),
}

BUILTIN_PREFIX = "builtin:"


def get_task(name: str) -> ArithmeticTask:
    """Look up a built-in task by name, with or without the `builtin:` prefix."""
    key = name.removeprefix(BUILTIN_PREFIX)
    if key not in TASKS:
        raise UnknownNameError(f"unknown built-in task {name!r}: choose one of "
                               f"{', '.join(BUILTIN_PREFIX + t for t in TASKS)}")
    return TASKS[key]
