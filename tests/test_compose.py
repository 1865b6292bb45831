"""docker-compose.yml: valid against the official Compose Specification schema, and it says
what SPEC §9 asks (services, one-shot migrate, healthchecks, GPU reservation, Redis durability).

No Docker engine runs here, so the file is checked by a real validator instead: jsonschema with
the compose-spec schema vendored in tests/data (origin in tests/data/README.md), and, where the
docker-compose CLI is installed, `docker-compose config -q` (it validates and resolves the file
without an engine).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
SCHEMA_FILE = Path(__file__).resolve().parent / "data" / "compose-spec.json"
DOCKERFILE = ROOT / "docker" / "Dockerfile"

EXPECTED_SERVICES = {"postgres", "redis", "migrate", "api", "worker-gpu", "worker-cpu", "beat"}
PASSWORD_FROM_ENV_FILE = "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD in .env}"
DATABASE_URL = f"postgresql+psycopg://softlabel:{PASSWORD_FROM_ENV_FILE}@postgres:5432/softlabel"
BROKER_URL = "redis://redis:6379/0"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(data, dict)
    return data


def _command(service: dict[str, Any]) -> list[str]:
    command = service.get("command", [])
    return command.split() if isinstance(command, str) else [str(c) for c in command]


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _schema() -> dict[str, Any]:
    schema = json.loads(SCHEMA_FILE.read_text())
    assert isinstance(schema, dict)
    return schema


def _validator() -> jsonschema.protocols.Validator:
    # The schema declares draft 2019-09 (by a $schema URL jsonschema does not map), so the
    # validator class is named here rather than guessed from it.
    return jsonschema.Draft201909Validator(_schema())


def test_schema_is_a_valid_json_schema() -> None:
    jsonschema.Draft201909Validator.check_schema(_schema())


def test_compose_file_matches_compose_spec(compose: dict[str, Any]) -> None:
    validator = _validator()
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.absolute_path))
    assert not errors, "\n".join(
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in errors
    )


def test_validator_rejects_a_broken_file(compose: dict[str, Any]) -> None:
    """The schema check is not vacuous: an unknown key or a bad condition is an error."""
    validator = _validator()
    broken = json.loads(json.dumps(compose))
    broken["services"]["api"]["depends_on"]["migrate"]["condition"] = "service_done"
    broken["services"]["redis"]["healthcheck"]["retires"] = 3
    assert len(list(validator.iter_errors(broken))) >= 2


def test_services_and_volumes(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == EXPECTED_SERVICES
    volumes = compose.get("volumes") or {}
    assert {"pgdata", "redisdata"} <= set(volumes)
    assert any(v.startswith("pgdata:") for v in services["postgres"]["volumes"])
    assert any(v.startswith("redisdata:") for v in services["redis"]["volumes"])


def test_app_services_share_one_image_and_the_service_urls(compose: dict[str, Any]) -> None:
    services = compose["services"]
    expected = {
        "migrate": ["migrate"],
        "api": ["api", "--host", "0.0.0.0", "--port", "8000"],
        "worker-gpu": ["worker"],
        "worker-cpu": ["worker"],
        "beat": ["beat"],
    }
    for name, prefix in expected.items():
        service = services[name]
        assert service["build"]["dockerfile"] == "docker/Dockerfile", name
        assert _command(service)[: len(prefix)] == prefix, name
        env = _env(service)
        assert env["SOFTLABEL_DATABASE_URL"] == DATABASE_URL, name
        assert env["SOFTLABEL_BROKER_URL"] == BROKER_URL, name
    assert services["worker-cpu"]["build"]["args"]["TORCH_VARIANT"] == "cpu"
    assert services["worker-gpu"]["build"]["args"]["TORCH_VARIANT"].startswith("cu")


def test_redis_is_durable_and_never_evicts(compose: dict[str, Any]) -> None:
    command = _command(compose["services"]["redis"])
    assert command[0] == "redis-server"
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"


def test_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert "redis-cli" in " ".join(services["redis"]["healthcheck"]["test"])
    assert "/healthz" in " ".join(services["api"]["healthcheck"]["test"])


def test_migrate_is_one_shot_and_gates_the_app(compose: dict[str, Any]) -> None:
    services = compose["services"]
    migrate = services["migrate"]
    assert migrate["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert migrate.get("restart", "no") == "no"
    for name in ("api", "worker-gpu", "worker-cpu", "beat"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name


def test_gpu_worker_reserves_an_nvidia_device(compose: dict[str, Any]) -> None:
    services = compose["services"]
    devices = services["worker-gpu"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert "deploy" not in services["worker-cpu"]
    assert "--concurrency" in _command(services["worker-gpu"])
    command = _command(services["worker-gpu"])
    assert command[command.index("--concurrency") + 1] == "1"


def test_dockerfile_installs_pinned_torch_first() -> None:
    text = DOCKERFILE.read_text()
    torch_at = text.index('"torch==${TORCH_VERSION}"')
    project_at = text.index("pip install -e .")
    assert torch_at < project_at
    assert "ARG TORCH_VERSION=2.13.0" in text
    assert "ARG TORCH_VARIANT=cpu" in text


def test_api_is_published_on_loopback_and_no_password_is_in_the_file(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert services["api"]["ports"] == ["${SOFTLABEL_PUBLISH_ADDRESS:-127.0.0.1}:8000:8000"]
    assert _env(services["postgres"])["POSTGRES_PASSWORD"] == PASSWORD_FROM_ENV_FILE
    example = (ROOT / ".env.example").read_text()
    assert "POSTGRES_PASSWORD=" in example
    assert ".env" in (ROOT / ".gitignore").read_text().split()


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose CLI absent")
def test_docker_compose_config_accepts_the_file(tmp_path: Path) -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE_FILE), "--env-file", str(ROOT / ".env.example"),
         "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "docker-compose.yml"
    text = COMPOSE_FILE.read_text().replace("service_completed_successfully", "service_done", 1)
    broken.write_text(text)
    result = subprocess.run(
        ["docker-compose", "-f", str(broken), "--env-file", str(ROOT / ".env.example"),
         "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0, "docker-compose accepted an invalid depends_on condition"
