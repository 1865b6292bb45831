"""SPEC §2: dependencies run one way, `api → core ← worker`.

* core/ml imports neither FastAPI (nor Starlette), Celery (nor kombu), SQLAlchemy, nor api/worker;
* core imports neither api nor worker;
* api never imports worker nor torch (directly or through anything it imports).

Checked statically, on every import statement of every module (also the ones inside functions),
and dynamically, in fresh interpreters: what importing a layer really loads.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# package prefix -> top-level (or dotted) module names its modules must not import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "core.ml": (
        "fastapi", "starlette", "celery", "kombu", "sqlalchemy", "alembic", "api", "worker",
    ),
    "core": ("api", "worker"),
    # api may use torch-free parts of core.ml (core.ml.upload); the dynamic test below checks
    # that nothing it imports pulls torch in transitively.
    "api": ("worker", "torch"),
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(package: str) -> Iterator[tuple[str, Path]]:
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        yield _module_name(path), path


def _imports(module: str, path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts)
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            yield node.lineno, target
            for alias in node.names:  # `from core import ml` imports core.ml
                yield node.lineno, f"{target}.{alias.name}"


def _matches(name: str, forbidden: str) -> bool:
    return name == forbidden or name.startswith(forbidden + ".")


def _rule_for(module: str) -> tuple[str, ...]:
    for prefix in sorted(FORBIDDEN, key=len, reverse=True):
        if _matches(module, prefix):
            return FORBIDDEN[prefix]
    return ()


def test_the_layers_exist() -> None:
    for package in ("api", "core", "core.ml", "worker"):
        assert any(True for _ in _modules(package)), package


@pytest.mark.parametrize("package", ["api", "core", "worker"])
def test_static_imports_follow_the_layering(package: str) -> None:
    violations = []
    for module, path in _modules(package):
        rule = _rule_for(module)
        for line, name in _imports(module, path):
            hit = next((f for f in rule if _matches(name, f)), None)
            if hit:
                violations.append(f"{path.relative_to(ROOT)}:{line}: {module} imports {name}")
    assert not violations, "layering violated (SPEC §2):\n" + "\n".join(violations)


def test_rule_table_picks_the_most_specific_layer() -> None:
    assert _rule_for("core.services.jobs") == FORBIDDEN["core"]
    assert _rule_for("core.ml.losses") == FORBIDDEN["core.ml"]
    assert _rule_for("api.routes.jobs") == FORBIDDEN["api"]
    assert _rule_for("worker.tasks") == ()


def test_the_checker_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    path = tmp_path / "x.py"
    path.write_text("def f():\n    import torch\n    from .. import worker\n    from . import y\n")
    names = {n for _, n in _imports("api.routes.x", path)}
    assert {"torch", "api.worker", "api.routes.y"} <= names


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_api_import_does_not_load_torch_or_worker() -> None:
    result = _run(
        "import sys\n"
        "import api.main\n"
        "api.main.create_app()\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'worker'))\n"
        "assert not bad, bad\n"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    plain = _run("import api.main, sys; assert 'torch' not in sys.modules")
    assert plain.returncode == 0, plain.stdout + plain.stderr


def test_core_ml_import_loads_no_web_queue_or_db_stack() -> None:
    result = _run(
        "import importlib, pkgutil, sys\n"
        "import core.ml\n"
        "for m in pkgutil.iter_modules(core.ml.__path__):\n"
        "    importlib.import_module('core.ml.' + m.name)\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & "
        "{'fastapi', 'starlette', 'celery', 'kombu', 'sqlalchemy', 'api', 'worker'})\n"
        "assert not bad, bad\n"
    )
    assert result.returncode == 0, result.stdout + result.stderr
