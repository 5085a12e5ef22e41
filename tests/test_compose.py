"""Checks of docker-compose.yml and the Dockerfile, read as files.

No Docker engine is needed: the tests parse the files and compare them with the
process commands, the settings and the start-up order that Modcus relies on.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.fernet import Fernet

from common.settings import GENERATE_SECRET_KEY_HINT, load_settings

PROJECT_DIR = Path(__file__).resolve().parent.parent
COMPOSE_PATH = PROJECT_DIR / "docker-compose.yml"
DOCKERFILE_PATH = PROJECT_DIR / "Dockerfile"
DOCKERIGNORE_PATH = PROJECT_DIR / ".dockerignore"

APP_SERVICES = ("migrate", "api", "worker", "beat")
LONG_RUNNING_APP_SERVICES = ("api", "worker", "beat")
REQUIRED_VARIABLES = ("DATABASE_URL", "REDIS_URL", "MODCUS_SECRET_KEY")

# The first words of each service's command: the process commands of the project.
PROCESS_COMMANDS = {
    "migrate": ["modcus", "db", "upgrade"],
    "api": ["uvicorn", "api.main:app"],
    "worker": ["celery", "-A", "worker", "worker"],
    "beat": ["celery", "-A", "worker", "beat"],
}


def load_compose() -> dict[str, Any]:
    with COMPOSE_PATH.open() as compose_file:
        compose = yaml.safe_load(compose_file)
    assert isinstance(compose, dict)
    return compose


def load_services() -> dict[str, Any]:
    services = load_compose()["services"]
    assert isinstance(services, dict)
    return services


def command_words(service: dict[str, Any]) -> list[str]:
    """Split a service's command, given as a string or a list, into words."""
    command = service["command"]
    if isinstance(command, str):
        return shlex.split(command)
    return [str(word) for word in command]


def service_environment(service: dict[str, Any]) -> dict[str, str | None]:
    """Return a service's environment as a mapping, from either Compose syntax."""
    environment = service.get("environment", {})
    if isinstance(environment, dict):
        return {name: None if value is None else str(value) for name, value in environment.items()}
    variables: dict[str, str | None] = {}
    for item in environment:
        name, separator, value = str(item).partition("=")
        variables[name] = value if separator else None
    return variables


def dependency_conditions(service: dict[str, Any]) -> dict[str, str]:
    depends_on = service.get("depends_on", {})
    if isinstance(depends_on, list):
        # The short syntax waits only for the start, never for health.
        return dict.fromkeys(depends_on, "service_started")
    return {name: options["condition"] for name, options in depends_on.items()}


def dockerfile_instructions() -> list[tuple[str, str]]:
    """Parse the Dockerfile into (INSTRUCTION, arguments) pairs, joining continued lines."""
    text = DOCKERFILE_PATH.read_text()
    instructions = []
    for line in re.sub(r"\\\n", " ", text).splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, arguments = stripped.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def test_compose_defines_services() -> None:
    services = load_services()

    for name in ("postgres", "redis", "migrate", "api", "worker", "beat"):
        assert name in services, f"service {name} is missing"


def test_compose_has_no_version_key() -> None:
    # The Compose specification dropped `version`, and Compose v2 warns about it.
    assert "version" not in load_compose()


@pytest.mark.parametrize("name", ["postgres", "redis", "api", "worker"])
def test_compose_healthcheck_has_test(name: str) -> None:
    service = load_services()[name]

    assert "healthcheck" in service, f"{name} has no healthcheck"
    assert service["healthcheck"].get("test"), f"{name}'s healthcheck has no test"


def test_compose_postgres_healthcheck_uses_pg_isready() -> None:
    test = load_services()["postgres"]["healthcheck"]["test"]

    assert "pg_isready" in " ".join(test)


def test_compose_api_healthcheck_requests_healthz() -> None:
    test = " ".join(load_services()["api"]["healthcheck"]["test"])

    assert "http://127.0.0.1:8000/healthz" in test


def test_compose_migrate_waits_for_postgres() -> None:
    conditions = dependency_conditions(load_services()["migrate"])

    assert conditions.get("postgres") == "service_healthy"


def test_compose_migrate_never_restarts() -> None:
    # Unquoted, `no` is the boolean false in YAML 1.1, which Compose rejects.
    assert load_services()["migrate"]["restart"] == "no"


@pytest.mark.parametrize("name", LONG_RUNNING_APP_SERVICES)
def test_compose_app_service_waits_for_dependencies(name: str) -> None:
    conditions = dependency_conditions(load_services()[name])

    assert conditions.get("migrate") == "service_completed_successfully"
    assert conditions.get("postgres") == "service_healthy"
    assert conditions.get("redis") == "service_healthy"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_command_is_process_command(name: str) -> None:
    expected = PROCESS_COMMANDS[name]

    assert command_words(load_services()[name])[: len(expected)] == expected


def test_compose_api_listens_on_all_interfaces() -> None:
    words = command_words(load_services()["api"])

    # Inside a container, 0.0.0.0 is needed for the published port to reach uvicorn.
    assert words[words.index("--host") + 1] == "0.0.0.0"  # noqa: S104
    assert words[words.index("--port") + 1] == "8000"


def test_compose_beat_schedule_in_tmp() -> None:
    # Any user can write to /tmp, so beat can create its schedule file as the image's user.
    words = command_words(load_services()["beat"])

    assert words[words.index("--schedule") + 1].startswith("/tmp/")


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_app_service_has_required_variables(name: str) -> None:
    environment = service_environment(load_services()[name])

    for variable in REQUIRED_VARIABLES:
        assert environment.get(variable), f"{name} does not set {variable}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_app_service_uses_shared_image(name: str) -> None:
    service = load_services()[name]

    assert service.get("image") == "modcus:latest"
    assert "build" in service, f"{name} cannot build the image it uses"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_compose_secret_key_is_required(name: str) -> None:
    secret_key = service_environment(load_services()[name])["MODCUS_SECRET_KEY"]

    assert secret_key is not None
    assert secret_key.startswith("${MODCUS_SECRET_KEY:?"), "the key must use the :? form"
    assert secret_key.endswith("}")
    # `docker compose up` prints this message, so it must include the key generation command.
    assert GENERATE_SECRET_KEY_HINT in secret_key


def test_compose_api_port_bound_to_loopback() -> None:
    ports = load_services()["api"]["ports"]

    assert ports == ["127.0.0.1:8000:8000"]


@pytest.mark.parametrize("name", ["postgres", "redis"])
def test_compose_backing_service_not_published(name: str) -> None:
    assert "ports" not in load_services()[name]


def test_compose_postgres_matches_database_url() -> None:
    services = load_services()
    postgres = service_environment(services["postgres"])
    database_url = service_environment(services["api"])["DATABASE_URL"]

    assert database_url == (
        f"postgresql://{postgres['POSTGRES_USER']}:{postgres['POSTGRES_PASSWORD']}"
        f"@postgres:5432/{postgres['POSTGRES_DB']}"
    )


def test_compose_urls_accepted_by_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    environment = service_environment(load_services()["api"])
    database_url = environment["DATABASE_URL"]
    redis_url = environment["REDIS_URL"]
    assert database_url is not None
    assert redis_url is not None
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("MODCUS_SECRET_KEY", Fernet.generate_key().decode())

    settings = load_settings()

    assert settings.async_database_url.host == "postgres"
    assert settings.async_database_url.database == "modcus"
    assert settings.redis_url == "redis://redis:6379/0"


def test_compose_dockerfile_exists() -> None:
    assert DOCKERFILE_PATH.is_file()


def test_compose_dockerfile_runs_as_non_root() -> None:
    users = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "USER"]

    assert users, "the Dockerfile has no USER instruction"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"the final USER is {users[-1]}"


def test_compose_dockerfile_installs_project() -> None:
    runs = [arguments for keyword, arguments in dockerfile_instructions() if keyword == "RUN"]

    # The project itself, possibly with extras: `pip install .` or `pip install '.[x]'`.
    assert any(
        re.search(r"\bpip install (--?\S+ )*'?\.(\[[a-z,]+\])?'?(\s|$)", run) for run in runs
    )
    assert not any("[dev]" in run for run in runs), "the image must not install the dev extras"
    assert not any(re.search(r"pip install (\S+ )*(-e|--editable)\b", run) for run in runs)


def test_compose_dockerignore_excludes_local_state() -> None:
    patterns = {
        line.strip()
        for line in DOCKERIGNORE_PATH.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }

    for pattern in (".git", ".venv", ".env", ".modcus"):
        assert pattern in patterns, f".dockerignore does not exclude {pattern}"


def test_compose_passes_every_setting() -> None:
    from common.settings import Settings

    environment = load_compose()["x-modcus-environment"]
    aliases = {str(field.validation_alias) for field in Settings.model_fields.values()}

    assert aliases - set(environment) == set()
