"""The house rules of services/, read from the source with ``ast`` (nothing is imported):

- Every service (one process each) stands on the shared packages only: no service imports another
  service's modules. A client tool (``soak``) stands on the shared packages too, and only the
  launcher (``skiff soak``) imports it. The one declared exception is ``services.shim -> services.lowlevel``: the shim
  runs the low-level runtime in a forked child instead of exec'ing it (a measured speed-up; see the
  shim's README). The shared packages (common, gen, dockermodel) import no service at all.
- No import circles among the modules of one package (a service or a shared package, its
  subpackages included).
- No hand-written module over 600 lines (services/gen is generated).
- services.dockermodel is pure: the standard library, services.common and the generated messages
  only (no aiohttp, no grpclib), so a daemon can render Docker's JSON without an HTTP stack.

Imports are found wherever they are written: at module level, inside functions, under
``if TYPE_CHECKING:``, and ``importlib.import_module``/``__import__`` calls whose argument is a
string literal, an f-string or a concatenation with a literal head, or a loop variable over a literal
tuple (the zygote's preload list, highlevel's plugin list).

Circles are judged on every import, lazy ones included: a function-level import that closes a
circle still ties the two modules together, it only hides the tie from the import system (the
apiserver's ``containers -> operations._since`` was one). A lazy import that closes no circle is fine
(start-up cost is the usual reason for one). Each circle is reported with the kind of every edge on
it, so a reader sees at once whether it is a module-level circle or one that lazy imports close.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"
SERVICES = ("apiserver", "daemon", "highlevel", "shim", "lowlevel", "cri")
SHARED = ("common", "gen", "dockermodel")
# The launcher (services/up.py and the package's own __init__) starts the services as processes:
# it may import the shared packages only, like a service.
LAUNCHER = ("__init__", "up")
# Client tools (skiff soak): they speak to engines over the Docker API (and signal pids), so they may
# import the shared packages only; the launcher may import them (they are `skiff` subcommands).
TOOLS = ("soak",)
DECLARED_EXCEPTIONS = {("shim", "lowlevel")}
GENERATED = ("gen",)
MAX_LINES = 600
IMPORT_CALLS = {"import_module", "__import__"}


@dataclass(frozen=True, slots=True)
class Edge:
    source: str  # the importing module, dotted
    target: str  # the imported module (or the deepest part of the name that exists under services/)
    line: int
    lazy: bool  # inside a function: runs when called, not when the module loads

    def where(self) -> str:
        return f"{self.source}:{self.line}{' (lazy)' if self.lazy else ''}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SERVICES_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def source_files() -> list[Path]:
    return sorted(p for p in SERVICES_DIR.rglob("*.py") if "__pycache__" not in p.parts)


def all_modules() -> set[str]:
    """Every module and package (a folder without ``__init__.py`` is a namespace package: still one)."""
    names = {module_name(p) for p in source_files()}
    return names | {name.rsplit(".", depth)[0] for name in names for depth in range(1, name.count("."))}


def package_of(module: str) -> str:
    """``services.daemon.network.bridge`` -> ``daemon``; ``services.up`` -> ``up``; ``services`` -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _resolve(name: str, known: set[str]) -> str:
    """The deepest existing module a dotted name reaches (``from pkg import mod`` names a module;
    ``from mod import func`` stops at ``mod``)."""
    parts = name.split(".")
    while parts and ".".join(parts) not in known:
        parts.pop()
    return ".".join(parts) or name


def _literal_strings(node: ast.expr) -> list[str] | None:
    if isinstance(node, (ast.Tuple, ast.List)) and all(
            isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
        return [e.value for e in node.elts]  # type: ignore[union-attr]
    return None


class _Finder(ast.NodeVisitor):
    """Every import of one module, with its line and whether it sits inside a function."""

    def __init__(self, module: str, is_package: bool, tree: ast.Module) -> None:
        self.module = module
        self.package = module if is_package else module.rpartition(".")[0]
        self.depth = 0
        self.found: list[tuple[str, int, bool]] = []
        # Names bound at module level to a literal tuple of strings (PLUGIN_MODULES = ("a.b",)).
        self.constants: dict[str, list[str]] = {}
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                values = _literal_strings(stmt.value)
                if values is not None:
                    self.constants[stmt.targets[0].id] = values
        # Loop variables over literal tuples: for name in ("cli", "commands"): ...
        self.loops: dict[str, list[str]] = {}
        for node in ast.walk(tree):
            if isinstance(node, (ast.For, ast.AsyncFor)) and isinstance(node.target, ast.Name):
                values = _literal_strings(node.iter)
                if values is None and isinstance(node.iter, ast.Name):
                    values = self.constants.get(node.iter.id)
                if values is not None:
                    self.loops[node.target.id] = values

    def _add(self, name: str, line: int) -> None:
        self.found.append((name, line, self.depth > 0))

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef  # type: ignore[assignment]
    visit_Lambda = visit_FunctionDef  # type: ignore[assignment]

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            origin = ".".join([*base, node.module] if node.module else base)
        else:
            origin = node.module or ""
        for alias in node.names:
            self._add(f"{origin}.{alias.name}", node.lineno)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        if called in IMPORT_CALLS and node.args:
            for name in self._names(node.args[0]):
                self._add(name, node.lineno)
        self.generic_visit(node)

    def _names(self, arg: ast.expr) -> list[str]:
        """The module names a dynamic import's argument can take, as far as the source says."""
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return [arg.value]
        if isinstance(arg, ast.Name):
            return self.loops.get(arg.id, [])
        head, tail = "", None
        if isinstance(arg, ast.JoinedStr) and arg.values:
            first = arg.values[0]
            head = first.value if isinstance(first, ast.Constant) and isinstance(first.value, str) else ""
            rest = arg.values[1:] if head else arg.values
            if len(rest) == 1 and isinstance(rest[0], ast.FormattedValue):
                tail = rest[0].value
        elif (isinstance(arg, ast.BinOp) and isinstance(arg.op, ast.Add) and isinstance(arg.left, ast.Constant)
              and isinstance(arg.left.value, str)):
            head, tail = arg.left.value, arg.right
        if not head:
            return []
        if isinstance(tail, ast.Name) and tail.id in self.loops:
            return [head + value for value in self.loops[tail.id]]
        return [head.rstrip(".")]  # at least the package it reaches into


def edges() -> Iterator[Edge]:
    known = all_modules()
    for path in source_files():
        name = module_name(path)
        tree = ast.parse(path.read_text(), filename=str(path))
        finder = _Finder(name, path.name == "__init__.py", tree)
        finder.visit(tree)
        for target, line, lazy in finder.found:
            if target == "services" or target.startswith("services."):
                yield Edge(name, _resolve(target, known), line, lazy)


def _allowed(source_pkg: str, target_pkg: str) -> bool:
    if source_pkg == target_pkg or target_pkg in SHARED:
        return True
    if source_pkg in LAUNCHER and target_pkg in TOOLS:
        return True
    return (source_pkg, target_pkg) in DECLARED_EXCEPTIONS


def test_every_package_is_classified() -> None:
    unknown = {package_of(m) for m in all_modules()} - set(SERVICES) - set(SHARED) - set(LAUNCHER) - set(TOOLS)
    assert not unknown, f"new packages under services/ must be declared a service, a tool or shared: {unknown}"


def test_no_service_imports_another_service() -> None:
    crossing = sorted(
        f"{e.where()} imports {e.target}" for e in edges()
        if e.target != "services" and not _allowed(package_of(e.source), package_of(e.target)))
    assert not crossing, "imports across service boundaries:\n" + "\n".join(crossing)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (or a module importing itself), Tarjan's."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in graph.get(node, ()):
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles_within_a_package() -> None:
    graph: dict[str, set[str]] = {}
    sites: dict[tuple[str, str], list[Edge]] = {}
    for e in edges():
        if e.source == e.target or package_of(e.source) != package_of(e.target):
            continue
        if package_of(e.source) in GENERATED or e.target == f"services.{package_of(e.source)}":
            continue  # generated code; the package's own (docstring-only) __init__
        graph.setdefault(e.source, set()).add(e.target)
        sites.setdefault((e.source, e.target), []).append(e)
    report = []
    for circle in _circles(graph):
        members = set(circle)
        ties = sorted({site.where() + f" -> {site.target}" for (a, b), found in sites.items()
                       if a in members and b in members for site in found})
        report.append(" <-> ".join(circle) + "\n    " + "\n    ".join(ties))
    assert not report, "import circles:\n" + "\n".join(report)


def test_no_hand_written_module_over_the_limit() -> None:
    too_long = sorted(
        f"{p.relative_to(SERVICES_DIR.parent)}: {n} lines" for p in source_files()
        if package_of(module_name(p)) not in GENERATED and (n := len(p.read_text().splitlines())) > MAX_LINES)
    assert not too_long, f"modules over {MAX_LINES} lines:\n" + "\n".join(too_long)


def test_the_docker_model_is_pure() -> None:
    impure = []
    for path in source_files():
        name = module_name(path)
        if package_of(name) != "dockermodel":
            continue
        tree = ast.parse(path.read_text(), filename=str(path))
        finder = _Finder(name, path.name == "__init__.py", tree)
        finder.visit(tree)
        for target, line, _ in finder.found:
            top = target.split(".")[0]
            if not (package_of(target) in SHARED if top == "services" else top in sys.stdlib_module_names):
                impure.append(f"{name}:{line} imports {target}")
    assert not impure, "services.dockermodel imports beyond stdlib, common and gen:\n" + "\n".join(impure)


def test_the_scanner_sees_dynamic_imports() -> None:
    """The finder itself: literal, f-string and loop-variable dynamic imports, relative imports."""
    source = (
        "import importlib\n"
        "NAMES = ('services.daemon.server',)\n"
        "from . import sibling\n"
        "def f():\n"
        "    importlib.import_module('services.apiserver.app')\n"
        "    for mod in ('cli', 'state'):\n"
        "        __import__(f'services.lowlevel.{mod}')\n"
        "    for name in NAMES:\n"
        "        importlib.import_module(name)\n"
        "    __import__('services.highlevel.' + other)\n"
    )
    tree = ast.parse(source)
    finder = _Finder("services.shim.zygote", False, tree)
    finder.visit(tree)
    found = {(name, lazy) for name, _, lazy in finder.found}
    assert found == {
        ("importlib", False), ("services.shim.sibling", False), ("services.apiserver.app", True),
        ("services.lowlevel.cli", True), ("services.lowlevel.state", True), ("services.daemon.server", True),
        ("services.highlevel", True),
    }
