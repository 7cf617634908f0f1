"""The package's folders are its layers, and imports run one way: network <- sampling <- lab <- demo / evaluation.

Every import in `dimr/` counts, those inside functions too: a lazy import up a layer is still a back-edge."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dimr"
# layer -> the layers it may import ("" is the package's top: atomic, checks, the public API, the CLI)
ALLOWED = {
    "network": set(),
    "sampling": {"network"},
    "lab": {"network", "sampling"},
    "demo": {"network", "sampling", "lab"},
    "evaluation": {"network", "sampling", "lab"},
}
BASE = {"dimr.atomic", "dimr.checks"}  # below every layer


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path):
    """The dimr modules a file imports, anywhere in it."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # `from dimr.x import y` imports the module dimr.x.y when there is one, else a name of dimr.x
            found |= {f"{base}.{alias.name}" if is_module(f"{base}.{alias.name}") else base for alias in node.names}
    return {name for name in found if name == "dimr" or name.startswith("dimr.")}


def is_module(name):
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def layer_of(name):
    parts = name.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ALLOWED else ""


def edges():
    """(importing module, imported module) for every import between two layers."""
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for target in imported_modules(path):
            if layer_of(source) != layer_of(target):
                yield source, target


def test_five_layer_folders_and_few_modules_beside_them():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == set(ALLOWED)
    assert len(list(PACKAGE.glob("*.py"))) <= 4, sorted(p.name for p in PACKAGE.glob("*.py"))
    for layer in ALLOWED:
        doc = ast.get_docstring(ast.parse((PACKAGE / layer / "__init__.py").read_text()))
        assert doc and "May import" in doc, f"dimr/{layer}/__init__.py should say what the layer may import"


def test_no_layer_imports_a_layer_above_it_or_beside_it():
    wrong = [f"{source} imports {target}" for source, target in edges()
             if layer_of(source) and layer_of(target) and layer_of(target) not in ALLOWED[layer_of(source)]]
    assert not wrong, "\n".join(wrong)


def test_layers_import_only_the_base_from_the_package_top():
    # The top (dimr/__init__, the CLI) imports the layers; a layer may use only the base modules from there.
    wrong = [f"{source} imports {target}" for source, target in edges()
             if layer_of(source) and not layer_of(target) and target not in BASE]
    assert not wrong, "\n".join(wrong)


def test_the_layer_graph_has_no_circle():
    graph = {layer: set() for layer in ALLOWED}
    for source, target in edges():
        if layer_of(source) and layer_of(target):
            graph[layer_of(source)].add(layer_of(target))

    def reaches(start, goal, seen=()):
        return any(nxt == goal or (nxt not in seen and reaches(nxt, goal, (*seen, nxt))) for nxt in graph[start])

    assert not [layer for layer in graph if reaches(layer, layer)]


def test_the_walk_sees_an_import_back_up():
    # The check above is only as good as this walk: a lazy import inside a function must be found.
    source = "def f():\n    from dimr.demo.limits import MAX_STEPS\n"
    tree = PACKAGE / "network" / "_probe.py"
    try:
        tree.write_text(source)
        assert ("dimr.network._probe", "dimr.demo.limits") in set(edges())
    finally:
        tree.unlink()


def test_no_module_is_too_long_to_read():
    long = {module_name(p): n for p in PACKAGE.rglob("*.py") if (n := len(p.read_text().splitlines())) > 450}
    assert not long, long
    assert len((PACKAGE.parent / "app.py").read_text().splitlines()) <= 350
