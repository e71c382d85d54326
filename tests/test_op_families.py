"""Every kernel op is one family of files (issue 14; the layout table below): the dispatcher
``<op>.py`` that always goes through ``fastcsi.backend.resolve_backend``, the oracle ``<op>_ref.py``
that shares no code with the kernels it checks, ``<op>_cpu.py``, ``<op>_triton.py`` (or a declared
exception), the C++ source named after the op, ``tests/<pkg>/test_<op>.py`` and ``bench/<op>.py``;
and no import circle inside a package of ``fastcsi``.

Read from the source with ``ast`` (nothing is imported), function-level imports included: a circle
closed by a lazy import is still a circle.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from fastcsi.backend import OPS, family_of

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastcsi"


def family(package, triton=None, cpp=None, test=None, no_triton=None):
    """One row of the table: ``package`` (dotted), extra kernel files, the C++ source, the test
    file (default tests/<pkg>/test_<op>.py), and why there is no Triton kernel when there is none."""
    return dict(package=package, triton=triton, cpp=cpp, test=test, no_triton=no_triton)


FAMILIES = {
    "radius": family("fastcsi.graph", triton=["radius_triton.py", "radius_triton_cells.py"], cpp="csrc/radius.cpp"),
    "gemnet_indices": family("fastcsi.graph", no_triton="torch ops on the device"),
    "covariance": family("fastcsi.stats", cpp="csrc/covariance.cpp"),
    "frechet": family("fastcsi.stats", no_triton='"cuda" = torch.linalg on the device'),
    "interaction": family("fastcsi.model.gemnet_oc", test="tests/model/test_interaction.py"),
    "activation": family("fastcsi.model.gemnet_oc", cpp="csrc/activation.cpp", test="tests/model/test_activation.py",
                         no_triton="torch's SiLU on CUDA is one fused pass already"),
}


def module_path(dotted: str) -> Path:
    return ROOT.joinpath(*dotted.split(".")).with_suffix(".py")


def parts(op: str) -> dict[str, Path]:
    """The files the table names for ``op`` (label -> path)."""
    row = FAMILIES[op]
    pkg_dir = ROOT.joinpath(*row["package"].split("."))
    short_pkg = row["package"].split(".")[1]
    found = {"dispatcher": pkg_dir / f"{op}.py", "ref": pkg_dir / f"{op}_ref.py", "cpu": pkg_dir / f"{op}_cpu.py"}
    if row["no_triton"] is None:
        for name in row["triton"] or [f"{op}_triton.py"]:
            found[f"triton {name}"] = pkg_dir / name
    if row["cpp"]:
        found["C++"] = ROOT / row["cpp"]
    found["test"] = ROOT / (row["test"] or f"tests/{short_pkg}/test_{op}.py")
    found["bench"] = ROOT / "bench" / f"{op}.py"
    return found


PARTS = [(op, label) for op in FAMILIES for label in parts(op)]


def test_the_table_covers_every_op_the_backend_knows():
    assert set(FAMILIES) == set(OPS)


@pytest.mark.parametrize("op,label", PARTS, ids=[f"{op}-{label}" for op, label in PARTS])
def test_part_exists(op, label):
    path = parts(op)[label]
    assert path.is_file(), f"{op}: {label} {path.relative_to(ROOT)} is missing"


@pytest.mark.parametrize("op", [op for op, row in FAMILIES.items() if row["no_triton"]])
def test_declared_exceptions_still_hold(op):
    """An op declared to have no Triton kernel has none (else the table is out of date)."""
    pkg_dir = ROOT.joinpath(*FAMILIES[op]["package"].split("."))
    assert not (pkg_dir / f"{op}_triton.py").exists(), f"{op}: a Triton kernel exists; update the table"


# ---------------------------------------------------------------------------------------- imports
def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every import statement, function-level ones included, except those under TYPE_CHECKING."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    names = list(rel.parts)
    return ".".join(names[:-1] if names[-1] == "__init__" else names)


def _modules() -> dict[str, Path]:
    """Every module of the package by dotted name (the bench link fastcsi/_bench excluded: bench/
    is not part of the layering)."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if "_bench" in path.relative_to(PACKAGE).parts[:1]:
            continue
        out[_module_name(path)] = path
    return out


MODULES = _modules()


def imported_modules(path: Path) -> set[str]:
    """The fastcsi modules ``path`` imports: ``from a.b import c`` means a.b.c when that is a module,
    else the package a.b; relative imports are resolved."""
    this = _module_name(path)
    is_init = path.name == "__init__.py"
    out = set()
    for node in _import_nodes(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = this.split(".") if is_init else this.split(".")[:-1]
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            out.add(candidate if candidate in MODULES else base)
    return {name for name in out if name in MODULES}


def _dispatcher_op_names(tree: ast.Module) -> list:
    """The first argument of every resolve_backend call: a string, a module-level string constant,
    or the AST node itself when it is neither."""
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    constants[target.id] = node.value.value
    names = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
        if called != "resolve_backend":
            continue
        arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "op"), None)
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            names.append(arg.value)
        elif isinstance(arg, ast.Name) and arg.id in constants:
            names.append(constants[arg.id])
        else:
            names.append(arg)
    return names


@pytest.mark.parametrize("op", list(FAMILIES))
def test_dispatcher_goes_through_resolve_backend(op):
    path = parts(op)["dispatcher"]
    if not path.is_file():
        pytest.fail(f"{op}: no dispatcher {path.relative_to(ROOT)}")
    tree = ast.parse(path.read_text(), filename=str(path))
    assert "fastcsi.backend" in imported_modules(path), f"{op}: the dispatcher does not import fastcsi.backend"
    names = _dispatcher_op_names(tree)
    assert names, f"{op}: {path.relative_to(ROOT)} never calls resolve_backend"
    for name in names:
        # the op name decides which ``override(...)`` key reaches this dispatcher
        assert isinstance(name, str), f"{op}: resolve_backend's op name is not a string constant (line {name.lineno})"
        assert family_of(name) == op, f"{op}: resolve_backend({name!r}) belongs to family {family_of(name)!r}"


@pytest.mark.parametrize("op", list(FAMILIES))
def test_reference_shares_no_code_with_the_kernels_it_checks(op):
    row = FAMILIES[op]
    ref = parts(op)["ref"]
    if not ref.is_file():
        pytest.fail(f"{op}: no reference {ref.relative_to(ROOT)}")
    fast = {f"{row['package']}.{op}"} | {name for name in MODULES if name.startswith(f"{row['package']}.{op}_")}
    fast.discard(f"{row['package']}.{op}_ref")
    shared = sorted(imported_modules(ref) & fast)
    assert not shared, f"{op}: {ref.relative_to(ROOT)} imports {', '.join(shared)}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        out.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = counter
                counter += 1
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return out


def test_cycle_finder_finds_a_lazy_circle():
    # the finder itself: a -> b -> c -> a is one circle, d hangs off it
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _package_of(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_no_import_circle_inside_a_package():
    graph = {}
    for name, path in MODULES.items():
        graph[name] = {dep for dep in imported_modules(path) if dep != name and _package_of(dep) == _package_of(name)}
    circles = _cycles(graph)
    assert not circles, "import circles: " + "; ".join(" <-> ".join(c) for c in circles)
