"""The `modcus` command line: database, clients, provider keys, companies and the demo.

Every command is sync and uses psycopg, except `keys check`: it probes keys through the
async provider SDKs, so it starts one event loop at the top and closes it when it ends.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import redis
import typer
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from common.companies import (
    DocumentFile,
    find_document_files,
    read_document_file,
    store_documents,
)
from common.crypto import SecretBox, hash_client_key, new_client_key
from common.db import create_sync_db_engine, sync_session_factory
from common.errors import InvalidInputError, ModcusError, NotFoundError
from common.keystore import add_key, delete_key_sync, list_keys_sync, set_key_enabled_sync
from common.master_key import rotate_master_key
from common.models import ApiClient, ProviderKey
from common.settings import get_settings

if TYPE_CHECKING:
    from common.revalidation import RevalidationSummary

# Pretty exceptions are off: they print local variables, which may hold secrets.
app = typer.Typer(
    help="Modcus: LLM analysis of listed companies as background jobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
clients_app = typer.Typer(help="API clients and their keys.", no_args_is_help=True)
keys_app = typer.Typer(help="LLM provider keys.", no_args_is_help=True)
companies_app = typer.Typer(help="Companies and their documents.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(clients_app, name="clients")
app.add_typer(keys_app, name="keys")
app.add_typer(companies_app, name="companies")


@contextmanager
def _session() -> Iterator[Session]:
    engine = create_sync_db_engine(get_settings())
    try:
        with sync_session_factory(engine)() as session:
            yield session
    finally:
        engine.dispose()


@db_app.command("upgrade")
def db_upgrade(revision: Annotated[str, typer.Argument(help="Target revision.")] = "head") -> None:
    """Apply the schema migrations to the database named by DATABASE_URL."""
    from common.migrate import upgrade_database

    get_settings()
    upgrade_database(revision)
    typer.echo(f"database is at revision {revision}")


@clients_app.command("create")
def clients_create(
    name: Annotated[str, typer.Argument(help="A unique name for the client.")],
    admin: Annotated[bool, typer.Option("--admin", help="Allow the admin endpoints.")] = False,
) -> None:
    """Create an API client and print its key once, as the last line."""
    name = name.strip()
    if not name:
        raise InvalidInputError("the client name is empty; pass a NAME")
    client_key = new_client_key()
    with _session() as session:
        session.add(ApiClient(name=name, key_hash=hash_client_key(client_key), is_admin=admin))
        try:
            session.commit()
        except IntegrityError:
            raise InvalidInputError(
                f"a client named {name!r} already exists; choose another name"
            ) from None
    role = "admin client" if admin else "client"
    typer.echo(
        f"created {role} {name!r}; its key is shown only now, send it as X-API-Key:", err=True
    )
    typer.echo(client_key)


def _read_secret() -> str:
    if sys.stdin.isatty():
        return getpass.getpass("secret (not echoed): ")
    # All of it: a service account key is a JSON file of many lines.
    return sys.stdin.read()


@keys_app.command("add")
def keys_add(
    provider: Annotated[
        str, typer.Argument(help="openai, openai-compatible, gemini, anthropic or vertex.")
    ],
    label: Annotated[str, typer.Option(help="A unique name for the key.")],
    base_url: Annotated[
        str | None, typer.Option(help="API base URL; required for openai-compatible.")
    ] = None,
    model: Annotated[
        str | None, typer.Option(help="Model to call; a default per provider.")
    ] = None,
    project: Annotated[
        str | None, typer.Option(help="Cloud project; keys of one project cool down together.")
    ] = None,
    priority: Annotated[int, typer.Option(help="Keys with a higher priority are used first.")] = 0,
) -> None:
    """Store a provider key. The secret is read from standard input, never from arguments."""
    secret = _read_secret()
    with _session() as session:
        key = add_key(
            session,
            SecretBox.from_settings(get_settings()),
            provider=provider,
            label=label,
            secret=secret,
            base_url=base_url,
            model=model,
            project=project,
            priority=priority,
        )
        typer.echo(f"added key {key.id} {key.label!r} ({key.provider}, {key.secret_hint})")


def _key_as_dict(key: ProviderKey) -> dict[str, object]:
    return {
        "id": key.id,
        "provider": key.provider,
        "label": key.label,
        "status": key.status,
        "secret": key.secret_hint,
        "model": key.model,
        "base_url": key.base_url,
        "project": key.project,
        "priority": key.priority,
        "status_reason": key.status_reason,
        "cooldown_until": key.cooldown_until.isoformat() if key.cooldown_until else None,
        "requests": key.request_count,
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "last_checked_at": key.last_checked_at.isoformat() if key.last_checked_at else None,
        "last_check_outcome": key.last_check_outcome,
    }


@keys_app.command("list")
def keys_list(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List provider keys with masked secrets."""
    with _session() as session:
        keys = [_key_as_dict(key) for key in list_keys_sync(session)]
    if as_json:
        typer.echo(json.dumps(keys, indent=2))
        return
    if not keys:
        typer.echo("no keys; add one with: modcus keys add PROVIDER --label NAME < secret.txt")
        return
    typer.echo(f"{'ID':>4}  {'PROVIDER':<18} {'LABEL':<24} {'STATUS':<10} SECRET")
    for key in keys:
        typer.echo(
            f"{key['id']:>4}  {key['provider']!s:<18} {key['label']!s:<24} "
            f"{key['status']!s:<10} {key['secret']}"
        )


KeyIdArgument = Annotated[
    int,
    typer.Argument(
        metavar="ID", min=1, max=2**31 - 1, help="The key's id, as 'modcus keys list' shows it."
    ),
]


def _key_not_found(key_id: int) -> NotFoundError:
    return NotFoundError(f"no key with id {key_id}; list keys with 'modcus keys list'")


def _delete_cooldown(redis_url: str, key_id: int) -> None:
    """Delete the key's cooldown in Redis; the rotator skips the key while that entry exists."""
    # Imported here because common.rotator loads llama-index, which adds seconds to every command.
    from common.rotator import cooldown_redis_key

    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(cooldown_redis_key(key_id))
    except redis.RedisError as exc:
        raise ModcusError(
            f"cannot reach Redis ({type(exc).__name__}) to clear the cooldown of key {key_id}, "
            "so the key was not changed; check REDIS_URL and that Redis is running"
        ) from None
    finally:
        client.close()


@keys_app.command("disable")
def keys_disable(key_id: KeyIdArgument) -> None:
    """Stop using a key until an operator enables it again."""
    with _session() as session:
        key = set_key_enabled_sync(session, key_id, enabled=False)
        if key is None:
            raise _key_not_found(key_id)
        session.commit()
    typer.echo(f"key {key.id} {key.label!r} is {key.status}")


@keys_app.command("enable")
def keys_enable(key_id: KeyIdArgument) -> None:
    """Make a disabled, invalid, exhausted or cooling key active, and end its cooldown."""
    settings = get_settings()
    with _session() as session:
        key = set_key_enabled_sync(session, key_id, enabled=True)
        if key is None:
            raise _key_not_found(key_id)
        # Redis is cleared before the commit, so that a Redis failure rolls the update back.
        _delete_cooldown(settings.redis_url, key_id)
        session.commit()
    typer.echo(f"key {key.id} {key.label!r} is {key.status}")


@keys_app.command("remove")
def keys_remove(key_id: KeyIdArgument) -> None:
    """Delete a key. Job attempts made with it stay, with its label."""
    with _session() as session:
        key = delete_key_sync(session, key_id)
        if key is None:
            raise _key_not_found(key_id)
        session.commit()
    typer.echo(f"key {key.id} {key.label!r} is removed")


@keys_app.command("check")
def keys_check(
    key_id: Annotated[
        int | None,
        typer.Option("--key", metavar="ID", help="Probe only this key; by default every key."),
    ] = None,
) -> None:
    """Probe keys now with a model-list request, which spends no tokens, and store the outcome.

    Exhausted keys, and cooling keys whose cooldown has passed, become active when the
    probe succeeds. Rejected keys become invalid or disabled. Disabled and invalid keys
    are not probed. Exits with 1 when another revalidation is running.
    """
    summary = asyncio.run(_check_keys(key_id))
    if summary.skipped:
        raise ModcusError(
            f"key revalidation {summary.describe()}; try again in a few seconds, when it has ended"
        )
    if not summary.results:
        typer.echo("no key to probe: every key is disabled or invalid, or none is stored")
    else:
        typer.echo(f"{'ID':>4}  {'LABEL':<24} {'STATUS':<10} OUTCOME")
    for result in summary.results:
        typer.echo(f"{result.key_id:>4}  {result.label:<24} {result.status:<10} {result.outcome}")
    typer.echo(summary.describe())


async def _check_keys(key_id: int | None) -> RevalidationSummary:
    """Run one revalidation on a Runtime created and closed on this event loop."""
    from common.keystore import get_key
    from common.models import KeyStatus
    from common.revalidation import revalidate_keys
    from common.runtime import Runtime

    runtime = await Runtime.start(get_settings())
    try:
        if key_id is not None:
            async with runtime.session_factory() as session:
                key = await get_key(session, key_id)
            if key is None:
                raise _key_not_found(key_id)
            if key.status in (KeyStatus.DISABLED, KeyStatus.INVALID):
                raise ModcusError(
                    f"key {key.id} {key.label!r} is {key.status}, so it is not probed: only an "
                    "operator returns a disabled or invalid key to service; enable it first "
                    f"with 'modcus keys enable {key.id}'"
                )
        return await revalidate_keys(runtime, key_id=key_id)
    finally:
        await runtime.aclose()


@keys_app.command("rotate-master-key")
def keys_rotate_master_key() -> None:
    """Re-encrypt every secret with MODCUS_SECRET_KEY, decrypting with MODCUS_OLD_SECRET_KEYS too.

    Either every secret is re-encrypted or none is. Afterwards, restart every API,
    worker and scheduler process with the new key, then remove MODCUS_OLD_SECRET_KEYS.
    """
    settings = get_settings()
    box = SecretBox.from_settings(settings)
    with _session() as session:
        count = rotate_master_key(session, box)
    typer.echo(f"re-encrypted {count} keys with MODCUS_SECRET_KEY")
    typer.echo(
        "restart every API, worker and scheduler process with this MODCUS_SECRET_KEY, "
        "then remove the old keys from MODCUS_OLD_SECRET_KEYS",
        err=True,
    )


@companies_app.command("load")
def companies_load(
    paths: Annotated[list[Path], typer.Argument(help="Document files, or folders of .md files.")],
) -> None:
    """Load company documents: header lines (ticker, company, period, ...), a blank line, text."""
    documents: list[DocumentFile] = [
        read_document_file(path) for path in find_document_files(paths)
    ]
    with _session() as session:
        store_documents(session, documents)
    tickers = sorted({document.ticker for document in documents})
    typer.echo(f"loaded {len(documents)} documents for {', '.join(tickers)}")


@app.command("demo")
def demo(
    timeout_s: Annotated[float, typer.Option(help="Seconds to wait for the job.")] = 120.0,
) -> None:
    """Run the main job end to end on the sample companies, with a local fake provider."""
    from common.demo import run_demo

    raise typer.Exit(run_demo(timeout_s=timeout_s))


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        app()
    except ModcusError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise SystemExit(1) from None
    except OperationalError as exc:
        # libpq's first line names the server and the reason, never the password.
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        typer.echo(
            f"error: the database failed: {reason}; "
            "check DATABASE_URL and that PostgreSQL is running",
            err=True,
        )
        raise SystemExit(1) from None
    except redis.exceptions.ConnectionError as exc:
        typer.echo(
            f"error: cannot reach Redis ({exc}); check REDIS_URL and that Redis is running",
            err=True,
        )
        raise SystemExit(1) from None
    except ConnectionError as exc:
        typer.echo(
            f"error: a connection failed ({exc}); check DATABASE_URL and REDIS_URL "
            "and that PostgreSQL and Redis are running",
            err=True,
        )
        raise SystemExit(1) from None
