"""Reading clam_dist's structure from its AST (no import runs): the import graph, which
modules import a method package, and string literals that name a method or a phase.
Used by tests/test_method_structure.py, which also tests these scans on snippets."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "clam_dist"
METHODS = "clam_dist.methods"
# What generic code may import of methods/: the registry and the spec.
INTERFACE = {METHODS, f"{METHODS}.spec"}


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(tree: ast.AST, this: str, known: set[str]) -> set[str]:
    """The clam_dist modules ``this`` imports, wherever the import stands (module level or
    inside a function: a function-level import still runs, so it still closes a loop),
    except under ``if TYPE_CHECKING:`` (never runs). ``from a import b`` counts as a.b
    when a.b is a module, else as a."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""  # absolute: test_method_structure checks there is no other
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {m for m in found if m in known}


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    known = set(files)
    return {m: imports_of(ast.parse(p.read_text()), m, known) - {m} for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def method_package_imports(graph: dict[str, set[str]]) -> list[str]:
    """'importer -> imported' for every module outside methods/ that imports anything
    of methods/ besides the registry and the spec."""
    return sorted(
        f"{m} -> {t}"
        for m, targets in graph.items()
        if not m.startswith(METHODS)
        for t in targets
        if t.startswith(METHODS) and t not in INTERFACE
    )


# model.init's strategy "kmeans" (k-means++ seeding refined by Lloyd) shares the baseline
# method's name; it is exempt exactly where it is the value of something named init.
INIT_STRATEGY = "kmeans"


def _names_init(expr: ast.AST) -> bool:
    name = expr.id if isinstance(expr, ast.Name) else getattr(expr, "attr", "")
    return name in ("init", "Init") or name.endswith("_init")


def _default_of(arguments: ast.arguments, literal: ast.AST) -> ast.arg | None:
    """The parameter whose default ``literal`` is."""
    positional = [*arguments.posonlyargs, *arguments.args]
    for arg, default in zip(
        positional[len(positional) - len(arguments.defaults) :], arguments.defaults
    ):
        if default is literal:
            return arg
    for arg, default in zip(arguments.kwonlyargs, arguments.kw_defaults):
        if default is literal:
            return arg
    return None


def _in_init_strategy(literal: ast.Constant, parents: list[ast.AST]) -> bool:
    """Is this "kmeans" a value of something named init (``init: Literal["kmeans", ...]``,
    ``cfg.model.init == "kmeans"``, ``init="kmeans"``, ``def f(init="kmeans")``,
    ``init_prototypes(x, k, "kmeans", ...)``)? Decided by the nearest enclosing node
    that says what the value is for."""
    if literal.value != INIT_STRATEGY:
        return False
    child: ast.AST = literal
    for node in reversed(parents):
        if isinstance(node, ast.Compare):
            return _names_init(node.left)
        if isinstance(node, ast.keyword):
            return node.arg is not None and _names_init(ast.Name(node.arg))
        if isinstance(node, ast.AnnAssign):
            return _names_init(node.target)
        if isinstance(node, ast.Assign):
            return any(_names_init(t) for t in node.targets)
        if isinstance(node, ast.arguments):
            arg = _default_of(node, child)
            return arg is not None and _names_init(ast.Name(arg.arg))
        if isinstance(node, ast.Call) and child in node.args:
            return ast.unparse(node.func).endswith("init_prototypes")
        child = node
    return False


def named_literals(tree: ast.AST, names: set[str]) -> list[tuple[int, str]]:
    """(line, value) of every string literal equal to one of ``names``, in any position:
    comparisons, ``match`` cases, dict keys, call arguments, defaults, assignments that
    alias it for a later branch. A ``kmeans`` that is one of model.init's values is the
    one exception (see _in_init_strategy)."""
    hits: list[tuple[int, str]] = []

    def visit(node: ast.AST, parents: list[ast.AST]) -> None:
        named = isinstance(node, ast.Constant) and isinstance(node.value, str)
        if named and node.value in names and not _in_init_strategy(node, parents):
            hits.append((node.lineno, node.value))
        for child in ast.iter_child_nodes(node):
            visit(child, [*parents, node])

    visit(tree, [])
    return hits


def literal_offenders(names: set[str], root: Path = PACKAGE) -> list[str]:
    """'file:line value' for every literal naming a method or phase outside methods/."""
    out = []
    for path in sorted(root.rglob("*.py")):
        if module_name(path, root).startswith(METHODS):
            continue
        for line, value in named_literals(ast.parse(path.read_text()), names):
            out.append(f"{path.relative_to(root)}:{line} {value!r}")
    return out


def relative_imports(root: Path = PACKAGE) -> list[str]:
    """'file:line' of every relative import (the graph reads absolute ones only)."""
    return [
        f"{path.relative_to(root)}:{node.lineno}"
        for path in sorted(root.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ImportFrom) and node.level
    ]
