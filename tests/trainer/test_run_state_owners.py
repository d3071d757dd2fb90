"""Each part of a call's run state has one writer (docs/architecture.md, "The run state").

A field that several modules write is a hidden contract between them. This reads the source
of every fulmen module and lists, for each attribute of a ``Run`` (``run.x = ...``, ``run.x +=
...``, ``run.part.x = ...``, ``setattr(run, ...)``), the modules that write it. ``Run.__init__``
declares the fields and does not count.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import fulmen

SOURCE = Path(fulmen.__file__).parent
#: Names under which code holds a run.
RUN_NAMES = {"run", "trial", "parent", "current_run"}
#: Objects the run only refers to: each has its own owner (the Trainer's progress counters, the
#: result stores' current hook name, the user's module, ...), so ``run.state.x = ...`` is not run state.
REFERENCED = {"state", "results", "train_results", "module", "datamodule", "trainer", "config", "strategy",
              "metrics", "hooks", "signals", "model"}  # fmt: skip


def _run_path(node: ast.expr, in_run_class: bool) -> str | None:
    """``"x"`` for ``run.x``, ``"part.x"`` for ``run.part.x``; None when the object is no run."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
        if isinstance(node, ast.Attribute) and node.attr in RUN_NAMES:
            return ".".join(reversed(parts))
        if isinstance(node, ast.Name) and (node.id in RUN_NAMES or (in_run_class and node.id == "self")):
            return ".".join(reversed(parts))
    return None


class _Writes(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.module = module
        self.found: dict[str, set[str]] = defaultdict(set)
        self.dynamic: list[str] = []
        self._run_class = False
        self._init = False

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        outer, self._run_class = self._run_class, node.name == "Run" and self.module == "trainer/run.py"
        self.generic_visit(node)
        self._run_class = outer

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        outer, self._init = self._init, self._run_class and node.name == "__init__"
        self.generic_visit(node)
        self._init = outer

    def _target(self, target: ast.expr) -> None:
        if isinstance(target, (ast.Tuple, ast.List)):
            for element in target.elts:
                self._target(element)
            return
        if isinstance(target, ast.Subscript):  # run.part[key] = ...: a write of run.part
            target = target.value
        if isinstance(target, ast.Attribute) and not self._init:
            path = _run_path(target, self._run_class)
            if path is not None and not ("." in path and path.split(".")[0] in REFERENCED):
                self.found[path].add(self.module)

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._target(target)
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        self._target(node.target)
        self.generic_visit(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._target(node.target)
        self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> None:
        if isinstance(node.func, ast.Name) and node.func.id == "setattr" and node.args:
            obj = node.args[0]
            if (isinstance(obj, ast.Name) and obj.id in RUN_NAMES) or _run_path(
                ast.Attribute(value=obj, attr="_"), False
            ):
                self.dynamic.append(f"{self.module}:{node.lineno}")
        self.generic_visit(node)


def run_state_writers() -> tuple[dict[str, set[str]], list[str]]:
    writers: dict[str, set[str]] = defaultdict(set)
    dynamic: list[str] = []
    for path in sorted(SOURCE.rglob("*.py")):
        module = path.relative_to(SOURCE).as_posix()
        visitor = _Writes(module)
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        for name, modules in visitor.found.items():
            writers[name] |= modules
        dynamic += visitor.dynamic
    return writers, dynamic


def test_the_checker_finds_writes_it_is_meant_to_find():
    source = (
        "def f(run, trainer):\n    run.a = 1\n    run.b.c += 2\n    trainer.current_run.d = 3\n    x.e = 4\n"
        "    run.state.global_step = 1\n    run.f, y = 1, 2\n    setattr(run, 'g', 1)\n"
    )
    visitor = _Writes("m.py")
    visitor.visit(ast.parse(source))
    assert dict(visitor.found) == {"a": {"m.py"}, "b.c": {"m.py"}, "d": {"m.py"}, "f": {"m.py"}}
    assert visitor.dynamic == ["m.py:8"]


def test_every_run_attribute_has_one_writing_module():
    writers, dynamic = run_state_writers()
    assert writers, "no run writes found: the checker is broken"
    shared = {name: sorted(modules) for name, modules in writers.items() if len(modules) > 1}
    assert shared == {}
    assert dynamic == [], "setattr on a run hides which module owns the field"
