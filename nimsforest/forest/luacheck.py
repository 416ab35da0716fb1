"""Which globals a Lua script reads that the sandbox does not give it (`os.execute`,
`io.open`, `require`): found in the script's syntax tree (luaparser), before it runs, so
such a script is refused when it is added (and reported by `nimsforest lint`) instead of
failing on every event.

Scopes follow Lua's: `local` names (declared after their values are evaluated), function
parameters, numeric and generic `for` variables, `repeat ... until` seeing the body's
locals, `local function` seeing itself, `self` in methods. A global the script assigns
anywhere (`function helper() ... end`, `count = 0`) is its own and may be read. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from luaparser import ast as lua_ast
from luaparser import astnodes as n


@dataclass(frozen=True)
class GlobalUse:
    """A global read: `shown` is what the script wrote (`os.execute`), `name` the global."""

    name: str
    shown: str
    line: int | None


class _Walker:
    def __init__(self) -> None:
        self.reads: list[GlobalUse] = []
        self.writes: set[str] = set()
        self.scopes: list[set[str]] = [set()]

    # scopes ---------------------------------------------------------------------------------
    def local(self, name: str) -> bool:
        return any(name in s for s in self.scopes)

    def declare(self, names: Iterable[str]) -> None:
        self.scopes[-1].update(names)

    def push(self, names: Iterable[str] = ()) -> None:
        self.scopes.append(set(names))

    def pop(self) -> None:
        self.scopes.pop()

    # nodes ----------------------------------------------------------------------------------
    def block(self, stmts: list[Any], line: int | None, extra: Iterable[str] = ()) -> None:
        self.push(extra)
        for s in stmts:
            self.visit(s, line)
        self.pop()

    def body(self, node: Any, line: int | None) -> list[Any]:
        return list(node.body) if isinstance(node, n.Block) else list(node or [])

    def function(self, args: list[Any], body: Any, line: int | None,
                 self_arg: bool = False) -> None:
        names = [a.id for a in args if isinstance(a, n.Name)]
        if self_arg:
            names.append("self")
        self.block(self.body(body, line), line, names)

    def read(self, name: str, shown: str, line: int | None) -> None:
        if not self.local(name):
            self.reads.append(GlobalUse(name, shown, line))

    def visit(self, node: Any, line: int | None) -> None:  # noqa: C901 - one case per node
        if isinstance(node, list):
            for x in node:
                self.visit(x, line)
            return
        if not isinstance(node, n.Node):
            return
        line = getattr(node, "line", None) or line
        if isinstance(node, n.Name):
            self.read(node.id, node.id, line)
        elif isinstance(node, n.Index):
            if isinstance(node.value, n.Name) and node.notation is n.IndexNotation.DOT \
                    and isinstance(node.idx, n.Name):
                self.read(node.value.id, f"{node.value.id}.{node.idx.id}", line)
            else:
                self.visit(node.value, line)
            if node.notation is not n.IndexNotation.DOT:
                self.visit(node.idx, line)
        elif isinstance(node, n.Invoke):
            self.visit(node.source, line)
            self.visit(node.args, line)
        elif isinstance(node, n.Field):
            if node.between_brackets:
                self.visit(node.key, line)
            self.visit(node.value, line)
        elif isinstance(node, n.LocalAssign):
            self.visit(node.values, line)
            self.declare(t.id for t in node.targets if isinstance(t, n.Name))
        elif isinstance(node, n.Assign):
            self.visit(node.values, line)
            for t in node.targets:
                if isinstance(t, n.Name):
                    if not self.local(t.id):
                        self.writes.add(t.id)
                else:
                    self.visit(t, line)
        elif isinstance(node, n.LocalFunction):
            if isinstance(node.name, n.Name):
                self.declare([node.name.id])
            self.function(node.args, node.body, line)
        elif isinstance(node, n.Method):
            self.visit(node.source, line)
            self.function(node.args, node.body, line, self_arg=True)
        elif isinstance(node, n.Function):
            if isinstance(node.name, n.Name):
                if not self.local(node.name.id):
                    self.writes.add(node.name.id)
            else:
                self.visit(node.name, line)
            self.function(node.args, node.body, line)
        elif isinstance(node, n.AnonymousFunction):
            self.function(node.args, node.body, line)
        elif isinstance(node, n.Fornum):
            self.visit([node.start, node.stop, node.step], line)
            target = node.target.id if isinstance(node.target, n.Name) else None
            self.block(self.body(node.body, line), line, [target] if target else [])
        elif isinstance(node, n.Forin):
            self.visit(node.iter, line)
            targets = [t.id for t in node.targets if isinstance(t, n.Name)]
            self.block(self.body(node.body, line), line, targets)
        elif isinstance(node, n.Repeat):
            self.push()
            for s in self.body(node.body, line):
                self.visit(s, line)
            self.visit(node.test, line)  # sees the body's locals
            self.pop()
        elif isinstance(node, n.Block):
            self.block(list(node.body), line)
        elif isinstance(node, (n.Goto, n.Label, n.Comment)):
            return
        else:
            for child in _children(node):
                self.visit(child, line)


def _children(node: Any) -> Iterator[Any]:
    for key, value in vars(node).items():
        if key.startswith("_") or key in ("comments", "wrapped", "line"):
            continue
        if isinstance(value, (n.Node, list)):
            yield value


def missing_globals(source: str, available: Iterable[str]) -> tuple[GlobalUse, ...] | None:
    """The reads of globals neither in `available` nor assigned by the script, in source
    order, each name once. None when the parser cannot read the script (Lua's own
    compiler, which decides what is valid Lua, is then the only check)."""
    try:
        tree = lua_ast.parse(source)
    except Exception:  # noqa: BLE001 - luaparser raises several error types
        return None
    w = _Walker()
    w.visit(tree.body, 1)
    have = set(available) | w.writes
    seen: set[str] = set()
    out: list[GlobalUse] = []
    for use in w.reads:
        if use.name not in have and use.shown not in seen:
            seen.add(use.shown)
            out.append(use)
    return tuple(out)


__all__ = ["GlobalUse", "missing_globals"]
