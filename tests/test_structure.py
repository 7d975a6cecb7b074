"""The engine's size limits: no function in ``fastrobust.engine`` over 60 lines, ``trainer.py`` under 350."""

from __future__ import annotations

import ast
from pathlib import Path

import fastrobust.engine

ENGINE = Path(fastrobust.engine.__file__).parent
MAX_FUNCTION_LINES = 60
MAX_TRAINER_LINES = 350


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.lineno, node.end_lineno - node.lineno + 1


def test_no_engine_function_is_over_60_lines():
    long = [f"{path.name}:{line} {name} ({n} lines)" for path in sorted(ENGINE.glob("*.py"))
            for name, line, n in _functions(path) if n > MAX_FUNCTION_LINES]
    assert not long, "\n".join(long)


def test_the_trainer_is_the_short_story_of_a_run():
    assert len((ENGINE / "trainer.py").read_text().splitlines()) < MAX_TRAINER_LINES


def test_the_check_sees_functions():
    sizes = {name: n for name, _, n in _functions(ENGINE / "trainer.py")}
    assert "train" in sizes and sizes["train"] > 10
