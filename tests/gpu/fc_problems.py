"""The function-call test model's arithmetic problems: wordings, their tool calls, and the held-out set.

Each problem is a question in one of WORDINGS plus the add/mul calls that answer it. HELD_OUT questions
never occur in the training data: make_problems skips any problem with a held-out tool-call signature.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from clients.funcall import dispatch

# (question, expected): the check's own question and four more, none of them in the training data.
HELD_OUT: list[tuple[str, int]] = [
    ("Compute (3+5)*2", 16),
    ("Compute (4+9)*3", 39),
    ("What is 6 * 7 + 5?", 47),
    ("Calculate 15 + 27 + 8", 50),
    ("What is 7 times 12?", 84),
]

# Wordings per structure; {a} {b} {c} are the operands in the order the calls use them.
WORDINGS: dict[str, list[str]] = {
    "add": [
        "Compute {a}+{b}",
        "What is {a} + {b}?",
        "Calculate {a} plus {b}",
        "Add {a} and {b}.",
        "{a}+{b} = ?",
        "What is the sum of {a} and {b}?",
        "Please compute {a} + {b}.",
        "what's {a} plus {b}",
    ],
    "mul": [
        "Compute {a}*{b}",
        "What is {a} * {b}?",
        "Calculate {a} times {b}",
        "Multiply {a} by {b}.",
        "{a}*{b} = ?",
        "What is the product of {a} and {b}?",
        "What is {a} times {b}?",
        "Please compute {a} * {b}.",
    ],
    "add_mul": [
        "Compute ({a}+{b})*{c}",
        "What is ({a} + {b}) * {c}?",
        "Calculate ({a}+{b})*{c}",
        "({a}+{b})*{c} = ?",
        "Add {a} and {b}, then multiply by {c}.",
        "Multiply the sum of {a} and {b} by {c}.",
        "compute {a} plus {b}, times {c}",
        "Compute {c}*({a}+{b})",
        "What is {c} * ({a} + {b})?",
    ],
    "mul_add": [
        "Compute {a}*{b}+{c}",
        "What is {a} * {b} + {c}?",
        "Calculate {a}*{b} + {c}",
        "{a}*{b}+{c} = ?",
        "Multiply {a} by {b}, then add {c}.",
        "compute {a} times {b} plus {c}",
        "Compute {c}+{a}*{b}",
        "What is {c} + {a} * {b}?",
    ],
    "add_add": [
        "Compute {a}+{b}+{c}",
        "What is {a} + {b} + {c}?",
        "Calculate {a} + {b} + {c}",
        "Add {a}, {b} and {c}.",
        "{a}+{b}+{c} = ?",
        "what's {a} plus {b} plus {c}",
    ],
    "mul_mul": [
        "Compute {a}*{b}*{c}",
        "What is {a} * {b} * {c}?",
        "Calculate {a} * {b} * {c}",
        "Multiply {a}, {b} and {c}.",
        "{a}*{b}*{c} = ?",
        "what's {a} times {b} times {c}",
    ],
}
STRUCTURES = {"add": ["add"], "mul": ["mul"], "add_mul": ["add", "mul"], "mul_add": ["mul", "add"],
              "add_add": ["add", "add"], "mul_mul": ["mul", "mul"]}  # fmt: skip


@dataclass(frozen=True)
class Problem:
    question: str
    calls: tuple[tuple[str, int, int], ...]  # (tool, a, b); b of a later call may be the earlier result
    answer: int


def signature(calls: tuple[tuple[str, int, int], ...]) -> tuple[tuple[str, frozenset[int]], ...]:
    """What a problem computes, operands in any order: the held-out test for training data."""
    return tuple((name, frozenset((a, b))) for name, a, b in calls)


def solve(structure: str, a: int, b: int, c: int | None) -> tuple[tuple[tuple[str, int, int], ...], int]:
    first, *rest = STRUCTURES[structure]
    calls = [(first, a, b)]
    value = dispatch(first, {"a": a, "b": b})[1]
    for name in rest:
        calls.append((name, value, c))
        value = dispatch(name, {"a": value, "b": c})[1]
    return tuple(calls), value


def held_out_signatures() -> set[tuple[tuple[str, frozenset[int]], ...]]:
    """The held-out questions parsed back into their structures (fails loudly if a wording changes)."""
    sigs = set()
    for question, expected in HELD_OUT:
        found = [
            (s, m)
            for s, forms in WORDINGS.items()
            for form in forms
            if (
                m := re.fullmatch(
                    re.escape(form).replace(r"\{a\}", r"(?P<a>\d+)").replace(r"\{b\}", r"(?P<b>\d+)").replace(r"\{c\}", r"(?P<c>\d+)"),
                    question,
                )
            )
        ]
        assert found, f"held-out question {question!r} matches no training wording"
        s, m = found[0]
        calls, value = solve(s, int(m["a"]), int(m["b"]), int(m["c"]) if m.groupdict().get("c") else None)
        assert value == expected, f"{question!r} computes {value}, not {expected}"
        sigs.add(signature(calls))
    return sigs


def make_problems(n: int, seed: int) -> list[Problem]:
    rng = random.Random(seed)
    banned = held_out_signatures()
    out: list[Problem] = []
    while len(out) < n:
        structure = rng.choice(list(STRUCTURES))
        hi = rng.choice([9, 20, 50, 99])
        a, b, c = (rng.randint(0, hi) for _ in range(3))
        calls, value = solve(structure, a, b, c if len(STRUCTURES[structure]) > 1 else None)
        if signature(calls) in banned:
            continue
        question = rng.choice(WORDINGS[structure]).format(a=a, b=b, c=c)
        out.append(Problem(question, calls, value))
    return out
