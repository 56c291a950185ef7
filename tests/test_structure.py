"""The package's structure, checked: imports point one way (no cycles), family knowledge stays in
``models/``, and each DVC stage depends on the code it imports."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

from genpipe.models import FAMILIES

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
PACKAGE = SRC / "genpipe"
GENERIC = ["training", "evaluation", "generation", "tracking", "storage", "data", "cli.py"]  # under src/genpipe
ENTRY_POINTS = [REPO / "flows", REPO / "tasks"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_path(name: str) -> Path | None:
    base = SRC.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, within: ast.AST | None = None) -> list[tuple[ast.stmt, str]]:
    """Every ``genpipe`` module an import statement in ``path`` (or in the node ``within``) loads:
    the module named and, for ``from X import y``, ``X.y`` where that is a module."""
    tree = within if within is not None else ast.parse(path.read_text())
    is_package = path.name == "__init__.py"
    here = module_name(path) if path.is_relative_to(SRC) else ""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node, a.name) for a in node.names if a.name.split(".")[0] == "genpipe"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package
                pkg = here.split(".") if is_package else here.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            if base.split(".")[0] != "genpipe":
                continue
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
            if len(subs) < len(node.names):  # a name the package itself defines: its __init__ runs
                out.append((node, base))
            out += [(node, sub) for sub in subs]
    return out


def loaded(importer: str, target: str) -> set[str]:
    """The modules importing ``target`` from ``importer`` runs: ``target`` and the ``__init__`` of
    each package above it, except the packages ``importer`` already sits in (and ``genpipe``)."""
    parts, out = target.split("."), set()
    for i in range(2, len(parts) + 1):
        prefix = ".".join(parts[:i])
        inside = importer == prefix or importer.startswith(prefix + ".")
        if prefix in MODULES and prefix != importer and (i == len(parts) or not inside):
            out.add(prefix)
    return out


def graph() -> dict[str, set[str]]:
    """Module -> the genpipe modules loading it loads directly."""
    return {name: {m for _, t in imports(path) for m in loaded(name, t)} for name, path in MODULES.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def closure(roots: set[str], edges: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), list(roots)
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo += edges.get(m, ())
    return seen


def test_the_package_has_no_import_cycle():
    found = cycles(graph())
    assert not found, f"import cycles: {found}"


def test_tracking_loads_no_family():
    """MLflow at the edges: logging a run or a report needs no model code (and no torch model)."""
    reached = closure({"genpipe.tracking"}, graph())
    assert not [m for m in reached if m == "genpipe.models" or m.startswith("genpipe.models.")], sorted(reached)


def test_the_cycle_finder_finds_a_cycle():  # so that the test above can fail
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_imports_are_at_module_level_unless_a_comment_says_why_not():
    """A genpipe module is imported at the top (the CLI alone defers its stages, so each command
    loads only its own); a third-party import inside a function says on its line, or just above,
    why it is deferred."""
    bad = []
    for path in [*MODULES.values(), *(p for d in ENTRY_POINTS for p in d.glob("*.py"))]:
        lines = path.read_text().splitlines()
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if not isinstance(node, (ast.Import, ast.ImportFrom)):
                    continue
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                own = [t for n, t in imports(path, node)] if path.is_relative_to(SRC) else []
                if own and path != PACKAGE / "cli.py":
                    bad.append(f"{where}: genpipe import inside a function")
                elif not own and not any("#" in line for line in lines[max(0, node.lineno - 3) : node.lineno]):
                    bad.append(f"{where}: deferred import without a comment saying why")
    assert not bad, "\n".join(bad)


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                out.add(id(first.value))
    return out


def family_mentions(path: Path, names: list[str]) -> list[str]:
    """Where the code of ``path`` names a family: a string (not a docstring) with the name as a
    word, or an attribute of that name (``cfg.vae``). Prose in docstrings and comments may give
    examples; code may not decide by them."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, names)) + r")\b")
    tree = ast.parse(path.read_text())
    docs = _docstrings(tree)
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs:
            if m := pattern.search(node.value):
                out.append(f"{where}:{node.lineno}: {m.group(0)!r} in {node.value[:60]!r}")
        elif isinstance(node, ast.Attribute) and node.attr in names:
            out.append(f"{where}:{node.lineno}: attribute .{node.attr}")
    return out


def generic_files() -> list[Path]:
    paths = []
    for entry in GENERIC:
        p = PACKAGE / entry
        paths += [p] if p.is_file() else sorted(p.rglob("*.py"))
    paths += [p for p in PACKAGE.glob("*.py")]  # config, artifacts, results, images, runtime, ...
    return sorted(set(paths)) + [p for d in ENTRY_POINTS for p in sorted(d.glob("*.py"))]


def test_no_family_is_named_outside_models():
    found = [hit for path in generic_files() for hit in family_mentions(path, list(FAMILIES))]
    assert not found, "family names in generic code (put what differs in the family's spec):\n" + "\n".join(found)


def test_the_family_name_check_finds_a_name(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('"""The vae docstring may name it."""\nif family == "diffusion":\n    x = cfg.gan\n')
    hits = family_mentions(probe, list(FAMILIES))
    assert len(hits) == 2 and "'diffusion'" in hits[0] and ".gan" in hits[1]


# ----------------------------------------------------------------------------- DVC stage dependencies


def stage_modules() -> dict[str, set[str]]:
    """What ``genpipe <stage>`` imports: the CLI's module-level imports plus its branch's own."""
    cli = PACKAGE / "cli.py"
    tree = ast.parse(cli.read_text())
    top = {m for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
           for _, t in imports(cli, node) for m in loaded("genpipe.cli", t)}
    out = {}
    for node in ast.walk(tree):
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Compare) and isinstance(node.test.left, ast.Attribute)
                and node.test.left.attr == "stage"):
            stage = node.test.comparators[0].value
            own = {m for stmt in node.body for _, t in imports(cli, stmt) for m in loaded("genpipe.cli", t)}
            out[stage] = top | own
    return out


DATA_READ = {"genpipe.evaluation.render": PACKAGE / "evaluation" / "templates"}  # module -> package data it loads


def code_deps(deps: list[str]) -> list[Path]:
    return [REPO / d for d in deps if isinstance(d, str) and d.startswith("src/")]


def test_each_dvc_stage_depends_on_all_the_code_it_imports():
    edges = graph()
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    by_stage = stage_modules()
    assert set(stages) <= set(by_stage), f"dvc.yaml stages without a CLI branch: {set(stages) - set(by_stage)}"
    missing = []
    for stage, spec in stages.items():
        spec = spec.get("do", spec)  # foreach stages
        deps = code_deps(spec.get("deps", []))
        for module in sorted(closure(by_stage[stage], edges) | {"genpipe", "genpipe.cli"}):
            path = MODULES[module]
            for needed in (path, DATA_READ.get(module)):
                if needed is not None and not any(needed == d or d in needed.parents for d in deps):
                    missing.append(f"{stage}: {needed.relative_to(REPO)}")
    assert not missing, "dvc.yaml stage deps miss code the stage imports:\n" + "\n".join(missing)
