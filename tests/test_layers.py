"""Dependencies point one way (BRIEF §1, docs/ARCHITECTURE.md's package table): each package imports
only the packages its row allows, wherever the import sits (module top or inside a function)."""

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FOLDERS = {"schemas": "schemas", "core": "touchpoint/core", "streaming": "streaming", "jobs": "jobs",
           "expectations": "expectations", "infra": "infra", "dags": "dags"}
# docs/ARCHITECTURE.md, "Packages and the direction of dependencies"
MAY_IMPORT = {
    "schemas": set(),
    "core": {"schemas"},
    "streaming": {"core", "schemas"},
    "expectations": {"core", "schemas"},
    "jobs": {"core", "schemas", "expectations"},
    "infra": {"core"},
    "dags": {"jobs", "streaming"},
}
# Modules a package may import beyond its layers: infra/submit.py locates the scripts spark-submit
# runs, the job runner and the CLI's __main__.py (of the package root).
MAY_ALSO_IMPORT = {"infra": {"touchpoint.jobs.runner", "touchpoint"}}
# dags/ import only entry points (BRIEF §1): these modules' run/run_step/supervise functions
DAG_ENTRY_MODULES = {"touchpoint.jobs.runner", "touchpoint.jobs.pipeline", "touchpoint.jobs.maintenance",
                     "touchpoint.jobs.privacy", "touchpoint.streaming.supervisor"}


def imports_of(path: Path) -> set[str]:
    """Every touchpoint module or name a file imports, fully named (`from touchpoint.jobs import
    runner` is touchpoint.jobs.runner); absolute imports only, as the project writes them."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import"
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name == "touchpoint" or name.startswith("touchpoint.")}


def layer_of(module: str) -> str:
    """touchpoint.core.x -> core; touchpoint, touchpoint.cli -> front (the front ends: the CLI, demo,
    generator, collector, report), which the packages do not import."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FOLDERS else "front"


def also_allowed(layer: str, name: str) -> bool:
    """`name` is one of the modules MAY_ALSO_IMPORT lists for the layer, or a name in one (the package
    root itself only as such: everything is in it)."""
    return any(name == module or (module != "touchpoint" and name.startswith(module + "."))
               for module in MAY_ALSO_IMPORT.get(layer, ()))


def test_every_package_imports_only_what_its_row_allows():
    wrong = []
    for layer, folder in FOLDERS.items():
        files = sorted((REPO / folder).rglob("*.py"))
        assert files, folder
        for path in files:
            for module in sorted(imports_of(path)):
                target = layer_of(module)
                if target != layer and target not in MAY_IMPORT[layer] and not also_allowed(layer, module):
                    wrong.append(f"{path.relative_to(REPO)} imports {module}")
    assert wrong == []


def test_dag_files_import_only_entry_points():
    imported = {name.rsplit(".", 1)[0] for path in (REPO / "dags").glob("*.py") for name in imports_of(path)}
    assert imported and imported <= DAG_ENTRY_MODULES, sorted(imported - DAG_ENTRY_MODULES)


def test_the_check_sees_imports_inside_functions(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from touchpoint.jobs import runner\n    import touchpoint.core.spark\n")
    assert imports_of(module) == {"touchpoint.jobs.runner", "touchpoint.core.spark"}
    assert [layer_of(m) for m in ("touchpoint.jobs.runner", "touchpoint.cli", "touchpoint")] == ["jobs", "front", "front"]
    assert [also_allowed("infra", name) for name in ("touchpoint", "touchpoint.jobs.runner.JOBS", "touchpoint.cli",
                                                     "touchpoint.jobs.identity", "touchpoint.jobs")] == [
        True, True, False, False, False]
