"""ichseg's packages import each other along one direction: no package reaches, through any
chain of imports, back to itself. Scans are read only through the scan layer (`ichseg.scans`): no
module outside it imports a DICOM library or calls a NIfTI or DICOM reader, or asks a scan for
its `dicom` (which format it is); inside it, the modules import each other without a circle."""

from __future__ import annotations

import ast
from pathlib import Path

import ichseg

PACKAGE = Path(ichseg.__file__).parent


def _unit(module: str) -> str:
    """The package (`ichseg.data`) or top-level module (`ichseg.paths`) a module belongs to."""
    return ".".join(module.split(".")[:2])


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(tree: ast.Module, name: str, is_init: bool) -> list[str]:
    """Every module the module `name` (parsed as `tree`) imports, at any depth of the file,
    lazily or not; `from package import x` also names `package.x`, which may be a module."""
    targets: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                # `from . import x` in a module is relative to its package; in an __init__,
                # to the package itself.
                base = name.split(".")
                base = base[: len(base) - (node.level - is_init)]
                module = ".".join([*base, module] if module else base)
            targets += [module, *(f"{module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            targets += [alias.name for alias in node.names]
    return targets


def _sources() -> dict[str, tuple[Path, ast.Module]]:
    """Module name -> its file and syntax tree, for every module of ichseg."""
    return {
        _module_name(path): (path, ast.parse(path.read_text(encoding="utf-8")))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def import_graph() -> dict[str, set[str]]:
    """Unit -> the other units its modules import (at any depth of the file, lazily or not)."""
    graph: dict[str, set[str]] = {}
    for name, (path, tree) in _sources().items():
        unit = _unit(name)
        edges = graph.setdefault(unit, set())
        for target in _imports(tree, name, path.name == "__init__.py"):
            if target.startswith("ichseg.") and _unit(target) != unit:
                edges.add(_unit(target))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None."""
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*trail[trail.index(nxt) :], nxt] if nxt in trail else [node, nxt]
            if nxt not in state and (found := visit(nxt, [*trail, nxt])):
                return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start, [start])):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_packages_do_not_import_each_other_in_circles():
    graph = import_graph()
    assert {
        "ichseg.training",
        "ichseg.report",
        "ichseg.models",
        "ichseg.scans",
        "ichseg.jobs",
    } <= set(graph)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


SCAN_LAYER = "ichseg.scans"
# Libraries only the scan layer imports: what reads and writes DICOM.
SCAN_LIBRARIES = ("pydicom", "highdicom")
# Calls that read a scan or mask file, which only the scan layer makes.
SCAN_READERS = ("nib.load", "nibabel.load", "pydicom.dcmread", "dcmread")


def _dotted(node: ast.expr) -> str:
    """`a.b.c` of a name or attribute chain; "" for anything else."""
    if isinstance(node, ast.Attribute):
        head = _dotted(node.value)
        return f"{head}.{node.attr}" if head else ""
    return node.id if isinstance(node, ast.Name) else ""


def scan_layer_breaches(name: str, tree: ast.Module, is_init: bool = False) -> list[str]:
    """What the module `name` outside the scan layer does that only the scan layer may: import
    pydicom or highdicom, call a NIfTI or DICOM reader, read an attribute named `dicom` (a
    format branch: the scan answers what differs by format)."""
    if name == SCAN_LAYER or name.startswith(f"{SCAN_LAYER}."):
        return []
    found = [
        f"imports {target}"
        for target in _imports(tree, name, is_init)
        if target.split(".")[0] in SCAN_LIBRARIES
    ]
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _dotted(node.func) in SCAN_READERS:
            found.append(f"calls {_dotted(node.func)} (line {node.lineno})")
        elif isinstance(node, ast.Attribute) and node.attr == "dicom":
            found.append(f"reads .dicom (line {node.lineno})")
    return found


def test_the_scan_layer_rule_finds_each_breach():
    breach = """
import pydicom
from highdicom.seg import Segmentation
import nibabel as nib

image = nib.load(path)
header = pydicom.dcmread(path)
if scan.dicom is not None:
    pass
"""
    found = scan_layer_breaches("ichseg.inference.x", ast.parse(breach))
    assert found == [
        "imports pydicom",
        "imports highdicom.seg",
        "imports highdicom.seg.Segmentation",
        "calls nib.load (line 6)",
        "calls pydicom.dcmread (line 7)",
        "reads .dicom (line 8)",
    ]
    assert scan_layer_breaches("ichseg.scans.dicom", ast.parse(breach)) == []
    writer = "import nibabel as nib\nnib.save(nib.Nifti1Image(data, affine), path)\n"
    assert scan_layer_breaches("ichseg.data.phantom", ast.parse(writer)) == []


def test_scans_are_read_only_through_the_scan_layer():
    found = {
        name: breaches
        for name, (path, tree) in _sources().items()
        if (breaches := scan_layer_breaches(name, tree, path.name == "__init__.py"))
    }
    assert found == {}


def module_graph(package: str) -> dict[str, set[str]]:
    """Module -> the other modules of `package` it imports."""
    sources = _sources()
    inside = {name for name in sources if name.startswith(f"{package}.")}
    return {
        name: {
            target
            for target in _imports(tree, name, path.name == "__init__.py")
            if target in inside and target != name
        }
        for name, (path, tree) in sources.items()
        if name in inside
    }


def test_the_scan_layer_modules_import_each_other_without_a_circle():
    graph = module_graph(SCAN_LAYER)
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
    readers = {f"{SCAN_LAYER}.nifti", f"{SCAN_LAYER}.dicom"}
    assert graph[f"{SCAN_LAYER}.scan"].isdisjoint(readers)
    assert all(f"{SCAN_LAYER}.scan" in graph[reader] for reader in readers)
    assert readers <= graph[f"{SCAN_LAYER}.opener"]
