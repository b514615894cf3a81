"""The ``dlhub`` command line: the paper's init / update / publish / run / ls, plus search, status, describe,
delete, token and ``up`` (the embedded stack)."""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from dlhub.client.credentials import client_file, dlhub_home, load_credentials, read_saved, save_credentials
from dlhub.client.metadata import (
    add_dataset_links,
    dataset_document,
    python_function_document,
    sklearn_document,
)
from dlhub.client.sdk import DLHubClient, TaskFailed, TaskHandle
from dlhub.common.errors import DLHubError

if TYPE_CHECKING:
    import globus_sdk

    from dlhub.common.config import DLHubSettings

console = Console()
err_console = Console(stderr=True)
DEFAULT_METADATA_FILE = "dlhub.json"


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}")
    sys.exit(code)


def _client(ctx: click.Context) -> DLHubClient:
    obj: dict[str, Any] = ctx.ensure_object(dict)
    return DLHubClient(obj.get("url"), obj.get("token"))


def _print_json(data: Any) -> None:
    console.print_json(json.dumps(data, default=str))


def _load_json_arg(value: str) -> Any:
    """Parse a JSON argument; ``@file.json`` reads it from a file."""
    text = Path(value[1:]).read_text() if value.startswith("@") else value
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not valid JSON: {exc}") from exc


class DLHubGroup(click.Group):
    """Turn DLHub errors into one readable line and exit code 1 instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TaskFailed as exc:
            _fail(str(exc))
        except DLHubError as exc:
            field = f" (field: {exc.field})" if exc.field else ""
            stale = exc.code == "unauthorized" and ctx.invoked_subcommand != "login"
            hint = " (sign in again: `dlhub login`)" if stale else ""
            _fail(f"{exc.code}: {exc.message}{field}{hint}")
        except OSError as exc:
            _fail(str(exc))


@click.group(cls=DLHubGroup)
@click.option("--url", envvar="DLHUB_URL", help="Registry URL (default: from `dlhub up` or 127.0.0.1:8642).")
@click.option("--token", envvar="DLHUB_TOKEN", help="API token (default: the one `dlhub up` saved).")
@click.pass_context
def main(ctx: click.Context, url: str | None, token: str | None) -> None:
    """DLHub: publish, discover and run scientific models."""
    ctx.ensure_object(dict).update(url=url, token=token)


# -- the embedded stack --------------------------------------------------------------------------------------


@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Default: $DLHUB_HOME/data.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", "registry_port", default=8642, show_default=True, help="REST API port.")
@click.option("--broker-port", default=5560, show_default=True)
@click.option(
    "--workers", default=1, show_default=True, type=click.IntRange(min=0), help="General worker services."
)
@click.option(
    "--replicas",
    "replica_specs",
    multiple=True,
    metavar="OWNER/NAME=N",
    help="N more workers serving only this servable (repeatable; adds to [[worker.replicas]]).",
)
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="TOML config.")
@click.option("--user", default=None, help="Local user whose token is saved for the CLI (default: $USER).")
@click.option("--verbose", is_flag=True, help="Show the services' logs here instead of in <data-dir>/logs.")
@click.option("--startup-timeout-s", default=30.0, show_default=True)
@click.option(
    "--bus-auth/--no-bus-auth",
    default=None,
    help="CurveZMQ keys on the bus (default: on, unless bus.curve_enabled = false); off is for development.",
)
def up(
    data_dir: Path | None,
    host: str,
    registry_port: int,
    broker_port: int,
    workers: int,
    replica_specs: tuple[str, ...],
    config_file: Path | None,
    user: str | None,
    verbose: bool,
    startup_timeout_s: float,
    bus_auth: bool | None,
) -> None:
    """Start the whole embedded stack on this machine; Ctrl-C stops it."""
    from dlhub.client.tokens import require_server

    require_server("`dlhub up` runs the DLHub server")
    from dlhub.client.launcher import Stack, StackOptions, replica_counts, run_foreground, stop_grace_s
    from dlhub.client.tokens import ensure_local_token
    from dlhub.common.config import LoggingConfig, load_settings
    from dlhub.common.logging import configure_logging

    try:
        settings = load_settings(config_file)
    except ValueError as exc:  # pydantic's ValidationError names the bad field
        raise click.BadParameter(str(exc), param_hint="--config") from exc
    configured = {r.servable: r.count for r in settings.worker.replicas}
    try:
        replicas = replica_counts(configured, replica_specs)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--replicas") from exc

    configure_logging(LoggingConfig(format="console", level="info" if verbose else "warning"), service="up")

    resolved_dir = (data_dir or dlhub_home() / "data").resolve()
    options = StackOptions(
        data_dir=resolved_dir,
        host=host,
        registry_port=registry_port,
        broker_port=broker_port,
        workers=workers,
        replicas=replicas,
        config_file=config_file,
        log_format="console" if verbose else "json",
        log_to_console=verbose,
        stop_grace_s=stop_grace_s(settings),
        curve_keys_dir=_curve_keys_dir(settings, resolved_dir, bus_auth),
    )
    stack = Stack(options)
    started = time.monotonic()

    def on_ready(health: dict[str, Any]) -> None:
        username = user or os.environ.get("USER") or "local"
        token = ensure_local_token(resolved_dir, username, config_file=config_file)
        saved = resolved_dir / "client.json"
        save_credentials(saved, options.api_url, token)
        if data_dir is None:
            save_credentials(client_file(), options.api_url, token)
            saved = client_file()
        counts = health.get("broker", {}).get("handler_counts", {})
        kinds = [kind for kind, count in counts.items() for _ in range(count)]
        console.print(
            f"[green]DLHub is up[/green] in {time.monotonic() - started:.2f} s: "
            f"API {options.api_url}/api/v1\n"
            f"registered at the broker: {', '.join(sorted(kinds))}\n"
            f"data: {resolved_dir}   logs: {resolved_dir / 'logs'}\n"
            f"token for user '{username}' saved in {saved}\n"
            "Press Ctrl-C to stop."
        )
        sys.stdout.flush()

    sys.exit(run_foreground(stack, on_ready, startup_timeout_s))


def _curve_keys_dir(settings: DLHubSettings, data_dir: Path, bus_auth: bool | None) -> Path | None:
    """Where ``dlhub up`` keeps the bus keys, or None for a bus without them (``--no-bus-auth``, or
    ``bus.curve_enabled = false``)."""
    enabled = bus_auth if bus_auth is not None else settings.bus.curve_enabled is not False
    if not enabled:
        return None
    configured = settings.bus.curve_keys_dir
    # The settings' default is under their own data directory; `--data-dir` moves it with the data.
    if configured is None or configured == settings.data_dir / "keys":
        return data_dir / "keys"
    return configured


@main.command(context_settings={"ignore_unknown_options": True})
@click.option("--broker", required=True, metavar="tcp://HOST:PORT", help="The broker's address.")
@click.option("--data-dir", type=click.Path(path_type=Path), required=True, help="This worker's own data.")
@click.option("--registry-url", default=None, help="The registry's internal URL: bundles are fetched there.")
@click.option(
    "--serves", multiple=True, metavar="PATTERN", help="Servables served (owner/name globs; repeatable)."
)
@click.option("--site", default=None, help="Where this Task Manager runs (shown in `dlhub workers`).")
@click.option("--instance-id", default=None, help="A stable name for this Task Manager.")
@click.option(
    "--device", "devices", multiple=True, metavar="KIND:ID", help="A device offered (gpu:0; repeatable)."
)
@click.option("--key-name", default=None, metavar="worker-LABEL", help="Its bus keypair in <data-dir>/keys.")
@click.option("--bus-auth/--no-bus-auth", default=True, show_default=True, help="CurveZMQ keys on the bus.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None, help="TOML config.")
def worker(
    broker: str,
    data_dir: Path,
    registry_url: str | None,
    serves: tuple[str, ...],
    site: str | None,
    instance_id: str | None,
    devices: tuple[str, ...],
    key_name: str | None,
    bus_auth: bool,
    config_file: Path | None,
) -> None:
    """Run a worker (a Task Manager) on this machine, against a broker elsewhere (docs/task-managers.md)."""
    from dlhub.client.tokens import require_server

    require_server("`dlhub worker` runs a DLHub worker")
    argv = [sys.executable, "-m", "dlhub.worker", "--broker", broker, "--data-dir", str(data_dir)]
    argv.append("--bus-auth" if bus_auth else "--no-bus-auth")
    for option, value in (
        ("--registry-url", registry_url),
        ("--site", site),
        ("--instance-id", instance_id),
        ("--key-name", key_name),
        ("--config", str(config_file) if config_file else None),
    ):
        if value:
            argv += [option, value]
    for pattern in serves:
        argv += ["--serves", pattern]
    for device in devices:
        argv += ["--device", device]
    os.execv(sys.executable, argv)  # the worker is this process: signals and exit code are its own


@main.command()
@click.option("--json", "as_json", is_flag=True, help="The handler table as JSON.")
@click.pass_context
def workers(ctx: click.Context, as_json: bool) -> None:
    """The Task Managers registered at the broker: site, devices, executors, patterns, capacity (an
    administrator's token: `registry.admin_users`)."""
    with _client(ctx) as client:
        health = client.health()
    handlers = health.get("broker", {}).get("handlers")
    if handlers is None:
        _fail("the handler table is shown to administrators only (registry.admin_users)")
    rows = [h for h in handlers if h.get("kind") == "worker"]
    if as_json:
        _print_json(rows)
        return
    table = Table(
        "handler", "instance", "site", "devices", "executors", "serves", "capacity", "inflight", "state"
    )
    for h in rows:
        table.add_row(
            escape(h["handler_id"]),
            escape(h.get("instance_id") or "-"),
            escape(h.get("site") or "-"),
            escape(", ".join(h.get("devices") or []) or "-"),
            escape(", ".join(h.get("executors") or [])),
            escape(", ".join(h.get("serves") or h.get("topics") or [])),
            str(h["capacity"]),
            str(h["inflight"]),
            "draining" if h.get("draining") else "serving",
        )
    console.print(table)


@main.group()
def keys() -> None:
    """Manage the CurveZMQ keys of the bus (docs/security.md)."""


@keys.command("create")
@click.argument("names", nargs=-1)
@click.option(
    "--dir", "keys_dir", type=click.Path(path_type=Path), default=None, help="Default: <data-dir>/keys."
)
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Default: $DLHUB_HOME/data.")
@click.option(
    "--overwrite", is_flag=True, help="Replace existing keypairs (every peer then needs the new ones)."
)
def keys_create(
    names: tuple[str, ...], keys_dir: Path | None, data_dir: Path | None, overwrite: bool
) -> None:
    """Write the broker's keypair and one per role (registry, worker, builder, search, admin), or the NAMES
    given (``worker-gpu01``: a key of its own for one more worker). Existing keypairs are kept."""
    from dlhub.client.tokens import require_server

    require_server("`dlhub keys` writes the bus keys of a DLHub server")
    from dlhub.common.curve import BROKER_KEY, ROLES, create_keys

    target = keys_dir or (data_dir or dlhub_home() / "data").resolve() / "keys"
    try:
        written = create_keys(target, names or (BROKER_KEY, *ROLES), overwrite=overwrite)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="NAMES") from exc
    for name in written:  # names and paths only: a secret key is never printed
        click.echo(f"wrote {target / name}.key and {name}.key_secret")
    if not written:
        click.echo(f"every keypair exists already in {target} (--overwrite replaces them)")


@main.group()
def token() -> None:
    """Manage local API tokens (embedded deployments)."""


@token.command("create")
@click.argument("user")
@click.option("--data-dir", type=click.Path(path_type=Path), default=None, help="Default: $DLHUB_HOME/data.")
@click.option("--config", "config_file", type=click.Path(path_type=Path), default=None)
def token_create(user: str, data_dir: Path | None, config_file: Path | None) -> None:
    """Create a new API token for USER and print it (shown once; stored hashed)."""
    from dlhub.client.tokens import create_local_token

    click.echo(create_local_token((data_dir or dlhub_home() / "data").resolve(), user, config_file))


# -- signing in and sharing ----------------------------------------------------------------------------------


def _registry_url(ctx: click.Context) -> str:
    return load_credentials(ctx.ensure_object(dict).get("url"), anonymous=True).url


def _globus_reason(exc: globus_sdk.GlobusAPIError) -> str:
    """What Globus said about a refused request: its OAuth ``error``, else the HTTP status."""
    body = exc.raw_json if isinstance(exc.raw_json, dict) else {}
    return str(body.get("error_description") or body.get("error") or f"HTTP {exc.http_status}")


def _globus_login(url: str, info: dict[str, Any], no_browser: bool) -> tuple[str, dict[str, Any]]:
    """The Globus native-app flow: open the consent page, paste the code, keep access and refresh tokens."""
    import globus_sdk

    client_id, scope = str(info.get("native_client_id") or ""), str(info.get("scope") or "")
    if not client_id or not scope:
        _fail("this registry uses Globus Auth but names no native client (auth.globus.native_client_id)")
    auth = globus_sdk.NativeAppAuthClient(client_id)
    auth.oauth2_start_flow(requested_scopes=scope, refresh_tokens=True)
    authorize_url = auth.oauth2_get_authorize_url()
    click.echo(f"Sign in with your institution, ORCID or Google at:\n\n  {authorize_url}\n")
    if not no_browser:
        import webbrowser

        with contextlib.suppress(Exception):
            webbrowser.open(authorize_url)
    code = click.prompt("Authorization code").strip()
    try:
        # An authorization code is single-use: retrying a lost exchange could not succeed, only stall.
        with auth.transport.tune(max_retries=0):
            tokens = auth.oauth2_exchange_code_for_tokens(code)
    except globus_sdk.GlobusAPIError as exc:
        _fail(f"Globus Auth refused the code ({_globus_reason(exc)}); run `dlhub login` again for a new one")
    except globus_sdk.NetworkError as exc:
        _fail(f"cannot reach Globus Auth ({exc}); nothing was saved")
    match = [t for t in tokens.by_resource_server.values() if scope in str(t.get("scope", "")).split()]
    if not match:
        _fail("Globus Auth did not grant this registry's scope")
    granted = match[0]
    extra = {
        "provider": "globus",
        "client_id": client_id,
        "refresh_token": granted.get("refresh_token"),
        "expires_at_s": granted.get("expires_at_seconds"),
    }
    return str(granted["access_token"]), extra


@main.command()
@click.option("--token", "given", default=None, help="Local registries: the API token (default: prompt).")
@click.option("--no-browser", is_flag=True, help="Globus: print the sign-in URL without opening a browser.")
@click.pass_context
def login(ctx: click.Context, given: str | None, no_browser: bool) -> None:
    """Sign in to the registry and save the credentials for the CLI and the SDK."""
    url = _registry_url(ctx)
    with DLHubClient(url, anonymous=True) as anonymous:
        info = anonymous.auth_info()
    if info.get("provider") == "globus" and not (given or "").startswith("dlh_"):
        token, extra = _globus_login(url, info, no_browser)
    else:
        token = given or click.prompt("API token (from `dlhub token create <user>`)", hide_input=True).strip()
        extra = {"provider": "local"}
    with DLHubClient(url, token) as client:
        me = client.whoami()  # a bad token is refused here, before it is saved
    save_credentials(client_file(), url, token, **extra)
    click.echo(f"signed in to {url} as {me['user']} (credentials in {client_file()})")


@main.command()
@click.pass_context
def logout(ctx: click.Context) -> None:
    """Forget the saved credentials (and revoke Globus tokens)."""
    path = client_file()
    saved = read_saved(path)
    unrevoked: list[str] = []
    if saved.get("provider") == "globus" and saved.get("client_id"):
        import globus_sdk

        auth = globus_sdk.NativeAppAuthClient(str(saved["client_id"]))
        for key, label in (("token", "access token"), ("refresh_token", "refresh token")):
            if not saved.get(key):
                continue
            try:
                # Best effort, and quick offline: the local copy is forgotten either way.
                with auth.transport.tune(max_retries=0):
                    auth.oauth2_revoke_token(str(saved[key]))
            except globus_sdk.GlobusError as exc:
                reason = _globus_reason(exc) if isinstance(exc, globus_sdk.GlobusAPIError) else str(exc)
                unrevoked.append(f"{label} ({reason})")
    if saved.get("token"):
        keep = {k: v for k, v in saved.items() if k in ("url",)}
        path.write_text(json.dumps(keep))
        click.echo(f"signed out of {saved.get('url', 'the registry')}")
        if unrevoked:
            click.echo(
                f"could not revoke the {' and '.join(unrevoked)} at Globus Auth: removed locally only; "
                "revoke the consent at https://app.globus.org/account/consents",
                err=True,
            )
        if saved.get("provider") != "globus":
            click.echo("(a local token stays valid until revoked: `python -m dlhub.registry token revoke`)")
    else:
        click.echo("not signed in")


@main.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def whoami(ctx: click.Context, as_json: bool) -> None:
    """Who the registry takes you for: user, groups, administrator."""
    me = _client(ctx).whoami()
    if as_json:
        _print_json(me)
        return
    if me["user"] is None:
        click.echo("anonymous (not signed in: `dlhub login`)")
        return
    groups = ", ".join(me["groups"]) or "none"
    click.echo(f"{me['user']} ({me['provider']}{', administrator' if me['admin'] else ''}); groups: {groups}")


@main.command()
@click.argument("servable")
@click.option(
    "--with", "with_", multiple=True, help="Principal to share with: user:<name>, group:<id> (repeatable)."
)
@click.option("--without", multiple=True, help="Principal to stop sharing with (repeatable).")
@click.option("--public", is_flag=True, help="Make it visible to everyone.")
@click.option("--private", is_flag=True, help="Visible to you (and the maintainers you name) only.")
@click.option(
    "--maintainer", "maintainers", multiple=True, help="Owner only: name a maintainer (repeatable)."
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def share(
    ctx: click.Context,
    servable: str,
    with_: tuple[str, ...],
    without: tuple[str, ...],
    public: bool,
    private: bool,
    maintainers: tuple[str, ...],
    as_json: bool,
) -> None:
    """Show or change who may see SERVABLE (owner/name): e.g. `dlhub share me/model --with group:<id>`."""
    if public and private:
        raise click.UsageError("--public and --private contradict each other")
    client = _client(ctx)
    changes = with_ or without or public or private or maintainers
    if not changes:
        access = client.access(servable)
    else:
        owner = servable.split("/", 1)[0]
        access = client.share(
            servable,
            add=[*with_, *(["public"] if public else [])],
            remove=list(without),
            visible_to=[f"user:{owner}", *with_] if private else None,
            maintainers=list(maintainers) or None,
        )
    if as_json:
        _print_json(access)
        return
    click.echo(
        f"{access['shorthand_name']}: visible to {', '.join(access['visible_to']) or 'its owner only'}"
    )
    if access["maintainers"]:
        click.echo(f"  maintainers: {', '.join(access['maintainers'])}")


# -- publishing ----------------------------------------------------------------------------------------------


def _hinted_types(module: str, function: str, autobatch: bool) -> dict[str, Any]:
    """The input/output types and parameters of ``module:function`` from its type hints, as publish_model
    writes them; a module that does not import here (a dependency missing) leaves ``python object``."""
    from dlhub.client.describe import function_types

    try:
        target = _import_module(module, Path("."))
    except click.BadParameter as exc:
        err_console.print(
            f"[yellow]warning:[/yellow] {escape(exc.message)}; the input and output are written as "
            "'python object' (edit them, or install what the module imports and run init again)"
        )
        return {}
    for part in function.split("."):
        if not hasattr(target, part):
            raise click.BadParameter(f"{module} has no attribute {function!r}", param_hint="--function")
        target = getattr(target, part)
    try:
        signature = function_types(target, autobatch)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--function") from exc
    return {
        "input_type": signature.input,
        "output_type": signature.output,
        "parameters": signature.parameters,
        "unpack": signature.unpack,
    }


@main.command()
@click.option("--name", required=True, help="Servable name (no whitespace).")
@click.option("--title", default=None)
@click.option("--author", "authors", multiple=True, help='"Family, Given" (repeatable).')
@click.option("--affiliation", "affiliations", multiple=True)
@click.option("--description", default="")
@click.option("--domain", "domains", multiple=True)
@click.option("--function", "function", default=None, help="module:function for a Python function servable.")
@click.option("--file", "files", multiple=True, help="Extra file or folder to ship (repeatable).")
@click.option("--autobatch", is_flag=True, help="Call the function once per element of the input list.")
@click.option("--sklearn", "sklearn_model", default=None, help="Path of a pickled scikit-learn model.")
@click.option("--method", default="predict", show_default=True, help="scikit-learn method to expose as run.")
@click.option("--n-features", default=None, type=int, help="scikit-learn: number of input columns.")
@click.option("--serialization", type=click.Choice(["pickle", "joblib"]), default="pickle", show_default=True)
@click.option("--dataset", "dataset", is_flag=True, help="A dataset of the --file files (no code).")
@click.option(
    "--training-data",
    "training_data",
    multiple=True,
    help="Dataset it was trained on: owner/name[@version] or a DOI (repeatable).",
)
@click.option("--test-data", "test_data", multiple=True, help="Dataset it was tested on (repeatable).")
@click.option("--output", "output_file", default=DEFAULT_METADATA_FILE, show_default=True)
def init(
    name: str,
    title: str | None,
    authors: tuple[str, ...],
    affiliations: tuple[str, ...],
    description: str,
    domains: tuple[str, ...],
    function: str | None,
    files: tuple[str, ...],
    autobatch: bool,
    sklearn_model: str | None,
    method: str,
    n_features: int | None,
    serialization: str,
    dataset: bool,
    training_data: tuple[str, ...],
    test_data: tuple[str, ...],
    output_file: str,
) -> None:
    """Write a metadata document for a servable (or, with --dataset, a dataset) in the current directory."""
    common: dict[str, Any] = dict(
        name=name,
        title=title or name,
        authors=list(authors) or [os.environ.get("USER", "Unknown") + ", "],
        affiliations=affiliations,
        description=description,
        domains=domains,
        training_data=training_data,
        test_data=test_data,
    )
    if dataset:
        if function is not None or sklearn_model is not None or not files:
            raise click.UsageError("--dataset takes its files from --file, without --function or --sklearn")
        doc = dataset_document(files=files, **common)
    elif (function is None) == (sklearn_model is None):
        raise click.UsageError("give exactly one of --function module:function or --sklearn model.pkl")
    elif function is not None:
        module, _, func = function.partition(":")
        if not module or not func:
            raise click.BadParameter("expected module:function", param_hint="--function")
        shipped = list(files)
        if Path(f"{module}.py").is_file() and f"{module}.py" not in shipped:
            shipped.insert(0, f"{module}.py")
        doc = python_function_document(
            module=module,
            function=func,
            files=shipped,
            autobatch=autobatch,
            **_hinted_types(module, func, autobatch),
            **common,
        )
    else:
        assert sklearn_model is not None
        if n_features is None:
            raise click.UsageError("--n-features is required with --sklearn")
        doc = sklearn_document(
            model_path=sklearn_model,
            n_input_columns=n_features,
            method=method,
            serialization_method=serialization,
            **common,
        )
    Path(output_file).write_text(json.dumps(doc, indent=2) + "\n")
    console.print(f"wrote {output_file}; edit it, then run `dlhub publish`")


@main.command()
@click.argument("metadata_file", default=DEFAULT_METADATA_FILE, type=click.Path(exists=True, path_type=Path))
@click.option("--no-wait", is_flag=True, help="Return once uploaded, without waiting for the build.")
@click.pass_context
def publish(ctx: click.Context, metadata_file: Path, no_wait: bool) -> None:
    """Publish the servable described by METADATA_FILE with the files it names."""
    doc = json.loads(metadata_file.read_text())
    with _client(ctx) as client:
        reply = client.publish(doc, base_dir=metadata_file.parent, wait=False)
        if not no_wait:
            _watch_build(client, reply)
    console.print(f"published {reply['shorthand_name']}@{reply['version']} ({reply['status']})")
    console.print(f"build task: {reply['task_id']}")


LOG_TAIL_LINES = 20


def _watch_build(client: DLHubClient, reply: dict[str, Any], timeout_s: float = 3600.0) -> None:
    """Show the build of a just-published version as it runs, then wait for its task; on failure print the
    log's tail and the error and exit 1. A live status line on a terminal, plain lines otherwise."""
    ref = f"{reply['shorthand_name']}@{reply['version']}"
    state, latest = reply.get("status", "queued"), ""
    tail: list[str] = []
    live = err_console.is_terminal

    def show(status: Any | None) -> None:
        if status is not None:
            width = max(20, err_console.width - len(ref) - len(state) - 16)
            line = latest if len(latest) <= width else latest[: width - 1] + "…"
            status.update(f"building {ref}: [bold]{state}[/bold] {escape(line)}")

    try:
        with err_console.status(f"building {ref}") if live else _no_status() as status:
            for event in client.build_log(ref, follow=True, timeout_s=timeout_s):
                if "servable" in event:  # the record so far
                    state, tail = event["state"], list(event.get("log") or [])[-LOG_TAIL_LINES:]
                    latest = tail[-1] if tail else ""
                    if not live:
                        err_console.print(f"{ref}: {state}", highlight=False)
                if event.get("state"):
                    state = event["state"]
                    if not live:
                        err_console.print(f"{ref}: {state}", highlight=False)
                for line in event.get("lines") or []:
                    tail = [*tail, line][-LOG_TAIL_LINES:]
                    latest = line
                    if not live:
                        err_console.print(f"  {line}", highlight=False, markup=False)
                show(status)
    except DLHubError as exc:  # e.g. a registry without build records: just wait for the task
        err_console.print(f"(no build progress: {exc.message})", highlight=False)
    task = TaskHandle(client, reply["task_id"]).wait(timeout_s)
    if task["state"] == "failed":
        with contextlib.suppress(DLHubError):
            record = client.build_log(ref)
            tail = list(record.get("log") or [])[-LOG_TAIL_LINES:]
        err_console.print(f"[red]build of {ref} failed[/red]; last {len(tail)} log lines:")
        for line in tail:
            err_console.print(f"  {line}", highlight=False, markup=False)
        _fail(str((task.get("error") or {}).get("message") or "build failed"))
    reply["status"] = "ready"


@contextlib.contextmanager
def _no_status() -> Iterator[None]:
    yield None


def _import_module(module_name: str, search_dir: Path) -> Any:
    """Import ``module_name`` with ``search_dir`` first on the path."""
    sys.path.insert(0, str(search_dir.resolve()))
    try:
        return importlib.import_module(module_name)
    except Exception as exc:  # whatever the user's module raises while importing
        raise click.BadParameter(f"cannot import {module_name}: {type(exc).__name__}: {exc}") from exc
    finally:
        sys.path.pop(0)


def _import_object(reference: str, search_dir: Path) -> Any:
    """``module:attribute`` (a dotted attribute path is allowed), imported with ``search_dir`` on the path."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise click.BadParameter(f"expected module:attribute, got {reference!r}", param_hint="OBJECT")
    target: Any = _import_module(module_name, search_dir)
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise click.BadParameter(f"{module_name} has no attribute {attribute!r}", param_hint="OBJECT")
        target = getattr(target, part)
    return target


@main.command("publish-model")
@click.argument("obj", metavar="OBJECT")
@click.option("--name", required=True, help="Servable name (no whitespace).")
@click.option("--title", default=None, help="Default: the name.")
@click.option("--author", "authors", multiple=True, help='"Family, Given" (repeatable; default: $USER).')
@click.option("--affiliation", "affiliations", multiple=True)
@click.option("--description", default="")
@click.option("--domain", "domains", multiple=True)
@click.option("--visible-to", "visible_to", multiple=True, help='Default: "public" (repeatable).')
@click.option("--serialization", type=click.Choice(["pickle", "joblib"]), default=None, help="Estimators.")
@click.option("--autobatch", is_flag=True, help="Functions: call once per element of the input list.")
@click.option(
    "--path",
    "search_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="Directory the module is imported from.",
)
@click.option(
    "--training-data",
    "training_data",
    multiple=True,
    help="Dataset it was trained on: owner/name[@version] or a DOI (repeatable).",
)
@click.option("--test-data", "test_data", multiple=True, help="Dataset it was tested on (repeatable).")
@click.option("--no-wait", is_flag=True, help="Return once uploaded, without waiting for the build.")
@click.pass_context
def publish_model(
    ctx: click.Context,
    obj: str,
    name: str,
    title: str | None,
    authors: tuple[str, ...],
    affiliations: tuple[str, ...],
    description: str,
    domains: tuple[str, ...],
    visible_to: tuple[str, ...],
    serialization: str | None,
    autobatch: bool,
    search_dir: Path,
    training_data: tuple[str, ...],
    test_data: tuple[str, ...],
    no_wait: bool,
) -> None:
    """Publish a live object, OBJECT = module:attribute: a fitted scikit-learn estimator or a type-hinted
    function defined in a module file (see DLHubClient.publish_model)."""
    model = _import_object(obj, search_dir)
    options: dict[str, Any] = {"description": description, "affiliations": list(affiliations)}
    if domains:
        options["domains"] = list(domains)
    if visible_to:
        options["visible_to"] = list(visible_to)
    if serialization:
        options["serialization_method"] = serialization
    if autobatch:
        options["autobatch"] = True
    from dlhub.client.describe import describe

    try:
        described = describe(
            model,
            name=name,
            title=title or name,
            authors=list(authors) or [os.environ.get("USER", "Unknown") + ", "],
            **options,
        )
    except (TypeError, ValueError) as exc:  # not something describe() knows how to publish
        raise click.BadParameter(str(exc), param_hint="OBJECT") from exc
    add_dataset_links(described.metadata, training_data=training_data, test_data=test_data)
    with _client(ctx) as client:
        reply = client.publish(described.metadata, package=described.package(), wait=not no_wait)
    console.print(
        f"published {reply['shorthand_name']}@{reply['version']} ({reply.get('status', 'building')})"
    )
    console.print(f"build task: {reply['task_id']}")


@main.command()
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.pass_context
def upload(ctx: click.Context, path: Path) -> None:
    """Upload PATH as a blob for an input of type file; prints its id, size, sha256 and expiry."""
    with _client(ctx) as client:
        _print_json(client.upload_blob_info(path))


@main.command()
@click.argument("servable")
@click.argument("metadata_file", default=DEFAULT_METADATA_FILE, type=click.Path(exists=True, path_type=Path))
@click.option("--files/--no-files", default=False, help="Upload the files again (default: reuse).")
@click.option("--no-wait", is_flag=True)
@click.pass_context
def update(ctx: click.Context, servable: str, metadata_file: Path, files: bool, no_wait: bool) -> None:
    """Publish a new version of SERVABLE (owner/name) from METADATA_FILE."""
    doc = json.loads(metadata_file.read_text())
    base_dir = metadata_file.parent if files else None
    with _client(ctx) as client:
        reply = client.update(servable, doc, base_dir=base_dir, wait=not no_wait)
    console.print(f"updated {reply['shorthand_name']} to version {reply['version']} ({reply['status']})")


@main.command()
@click.argument("servable")
@click.confirmation_option(prompt="Delete this servable?")
@click.pass_context
def delete(ctx: click.Context, servable: str) -> None:
    """Delete SERVABLE (owner/name, or owner/name@version for one version)."""
    with _client(ctx) as client:
        _print_json(client.delete(servable))


# -- discovery -----------------------------------------------------------------------------------------------


def _servable_table(rows: list[dict[str, Any]], *, with_score: bool = False) -> Table:
    table = Table("servable", "version", "title", "type", "authors")
    if with_score:
        table.add_column("score")
    for row in rows:
        cells = [
            row.get("shorthand_name") or f"{row.get('owner')}/{row.get('name')}",
            str(row.get("version", "")),
            str(row.get("title", "")),
            str(
                row.get("servable_type")
                or ("dataset" if "dataset" in (row.get("kind"), row.get("type")) else "")
            ),
            ", ".join(row.get("authors", [])),
        ]
        if with_score:
            cells.append(f"{row.get('score', 0):.2f}")
        table.add_row(*cells)
    return table


@main.command("ls")
@click.option("--owner", default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ls(ctx: click.Context, owner: str | None, as_json: bool) -> None:
    """List servables (latest version of each)."""
    with _client(ctx) as client:
        rows = client.list(owner)
    if as_json:
        _print_json(rows)
    else:
        console.print(_servable_table(rows))


class DefaultCommandGroup(click.Group):
    """A group that runs ``default_command`` when the first argument is not one of its subcommands.

    ``dlhub search iris --owner alice`` runs ``dlhub search query iris --owner alice``, while
    ``dlhub search reindex`` runs the subcommand (``dlhub search query reindex`` searches for the word).
    """

    default_command = "query"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("invoke_without_command", True)
        kwargs.setdefault("no_args_is_help", False)
        super().__init__(*args, **kwargs)
        # Leave options and words after the group name to the default command.
        self.context_settings.setdefault("ignore_unknown_options", True)
        self.allow_interspersed_args = False

    def resolve_command(
        self, ctx: click.Context, args: list[str]
    ) -> tuple[str | None, click.Command | None, list[str]]:
        if args and args[0] in self.commands:
            return super().resolve_command(ctx, args)
        command = self.commands[self.default_command]
        return command.name, command, args


def _print_facets(facets: dict[str, list[dict[str, Any]]]) -> None:
    for facet, counts in facets.items():
        table = Table(facet, "count")
        for entry in counts:
            table.add_row(str(entry["value"]), str(entry["count"]))
        console.print(table)


@main.group(cls=DefaultCommandGroup)
@click.pass_context
def search(ctx: click.Context) -> None:
    """Search servables: `dlhub search [QUERY] [filters]`; `dlhub search reindex` rebuilds the index.

    Run `dlhub search query --help` for the filters.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(search_query)


@search.command("query")
@click.argument("query", default="")
@click.option("--owner", default=None)
@click.option("--name", default=None)
@click.option("--domain", default=None)
@click.option("--author", default=None)
@click.option("--doi", default=None, help="The servable's DOI or a related DOI (e.g. its paper's).")
@click.option("--model-type", default=None)
@click.option("--servable-type", default=None)
@click.option("--trained-on", default=None, help="Trained on this dataset: owner/name[@version] or a DOI.")
@click.option("--tested-on", default=None, help="Tested on this dataset: owner/name[@version] or a DOI.")
@click.option("--input-type", default=None, help="A method's input type: ndarray, list, dict, string ...")
@click.option(
    "--input-item-type", default=None, help="An item type of the input (lists, ndarrays): float ..."
)
@click.option(
    "--input-shape", default=None, help="Shape of your data as JSON, null for a size that varies: '[null,4]'."
)
@click.option("--output-type", default=None, help="A method's output type.")
@click.option("--output-item-type", default=None, help="An item type of the output (lists, ndarrays).")
@click.option("--output-shape", default=None, help="Output shape as JSON: '[null,1]'.")
@click.option("--published-from", default=None, help="ISO 8601 date/date-time or epoch seconds.")
@click.option("--published-to", default=None, help="ISO 8601 date/date-time or epoch seconds (inclusive).")
@click.option(
    "--facet",
    "facets",
    multiple=True,
    type=click.Choice(["domain", "model_type", "servable_type", "owner"]),
    help="Count matches by this field (repeatable).",
)
@click.option("--sort", type=click.Choice(["relevance", "publication_date", "name"]), default=None)
@click.option("--order", type=click.Choice(["asc", "desc"]), default=None)
@click.option("--limit", default=20, show_default=True)
@click.option("--offset", default=0)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def search_query(
    ctx: click.Context,
    /,
    query: str,
    limit: int,
    offset: int,
    as_json: bool,
    facets: tuple[str, ...],
    **filters: str | None,
) -> None:
    """Search servables by free text (prefix matching), filters, date range; optional facet counts."""
    with _client(ctx) as client:
        result = client.search(query, limit=limit, offset=offset, facets=list(facets) or None, **filters)
    if as_json:
        _print_json(result)
        return
    console.print(_servable_table(result["hits"], with_score=True))
    console.print(f"{result['total']} match(es)")
    _print_facets(result.get("facets") or {})


@search.command("reindex")
@click.pass_context
def search_reindex(ctx: click.Context) -> None:
    """Rebuild the search index from the registry without downtime (needs an admin token).

    Administrators are listed in the registry configuration: `registry.admin_users = ["alice"]`
    (or DLHUB_REGISTRY__ADMIN_USERS='["alice"]').
    """
    with _client(ctx) as client:
        outcome = client.reindex_search()
    console.print(f"reindexed {outcome['documents']} servable(s) into {outcome['index']}")


@main.command()
@click.argument("servable")
@click.pass_context
def describe(ctx: click.Context, servable: str) -> None:
    """Show the full record of SERVABLE (owner/name or owner/name@version)."""
    with _client(ctx) as client:
        _print_json(client.describe(servable))


@main.command()
@click.argument("servable")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["bibtex", "datacite"]),
    default="bibtex",
    show_default=True,
    help="BibTeX entry or DataCite 4.x JSON.",
)
@click.pass_context
def cite(ctx: click.Context, servable: str, fmt: str) -> None:
    """Print the citation of SERVABLE (owner/name for the latest version, or owner/name@version)."""
    with _client(ctx) as client:
        citation = client.citation(servable, format=fmt)
    if isinstance(citation, str):
        click.echo(citation, nl=False)
    else:
        click.echo(json.dumps(citation, indent=2, ensure_ascii=False))


# -- invocation ----------------------------------------------------------------------------------------------


def _file_input(value: str, *, local: bool = False) -> Any:
    """An http(s) URL stays a URL; anything else is a local file, uploaded by the SDK as a blob."""
    if value.lower().startswith(("http://", "https://")):
        return {"url": value}
    if local:
        raise click.BadParameter(
            f"{value!r}: a local run takes file inputs as http(s) URLs (there is no server to upload to)",
            param_hint="--file",
        )
    path = Path(value)
    if not path.is_file():
        raise click.BadParameter(f"{value!r} is neither an http(s) URL nor a file", param_hint="--file")
    return path


def _run_inputs(input_json: str | None, files: tuple[str, ...], *, local: bool = False) -> Any:
    if (input_json is None) == (not files):
        raise click.UsageError("give either --input JSON or --file (repeatable), not both")
    if input_json is not None:
        return _load_json_arg(input_json)
    refs = [_file_input(f, local=local) for f in files]
    return refs[0] if len(refs) == 1 else refs


def _run_parameters(params: tuple[str, ...]) -> dict[str, Any]:
    parameters: dict[str, Any] = {}
    for item in params:
        key, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"expected key=value, got {item!r}", param_hint="--param")
        try:
            parameters[key] = json.loads(value)
        except json.JSONDecodeError:
            parameters[key] = value
    return parameters


@main.command()
@click.argument("servable", required=False)
@click.option("--input", "-i", "input_json", default=None, help="Inputs as JSON (or @file.json).")
@click.option(
    "--file",
    "-f",
    "files",
    multiple=True,
    help="For a method whose input is a file: a local file (uploaded) or an http(s) URL. Repeat for a "
    "list of files.",
)
@click.option("--param", "-p", "params", multiple=True, help="key=JSON value (repeatable).")
@click.option("--method", default="run", show_default=True)
@click.option("--async", "asynchronous", is_flag=True, help="Submit and print the task ID.")
@click.option("--timings", is_flag=True, help="Also print the timings.")
@click.option(
    "--local",
    is_flag=True,
    help=f"Run on this machine from a publication document (SERVABLE is its path; default "
    f"{DEFAULT_METADATA_FILE}) and its files, with the worker's executor; no server.",
)
@click.pass_context
def run(
    ctx: click.Context,
    servable: str | None,
    input_json: str | None,
    files: tuple[str, ...],
    params: tuple[str, ...],
    method: str,
    asynchronous: bool,
    timings: bool,
    local: bool,
) -> None:
    """Run SERVABLE (owner/name[@version]) on the given inputs (--input JSON, or --file for file inputs);
    with --local, run the servable a document describes here (SERVABLE: the document's path)."""
    inputs = _run_inputs(input_json, files, local=local)
    parameters = _run_parameters(params)
    if local:
        if asynchronous:
            raise click.UsageError("--async needs a server; a local run answers when it is done")
        from dlhub.client.local import run_local

        record = run_local(
            Path(servable or DEFAULT_METADATA_FILE), inputs, parameters=parameters, method=method
        )
    else:
        if servable is None:
            raise click.UsageError("name the servable to run (owner/name[@version]), or give --local")
        with _client(ctx) as client:
            if asynchronous:
                handle = client.run_async(servable, inputs, parameters=parameters, method=method)
                click.echo(handle.task_id)
                return
            record = client.run_detailed(servable, inputs, parameters=parameters, method=method)
    if record["state"] == "failed":
        raise TaskFailed(record["task_id"], record.get("error") or {})
    _print_json(record["output"])
    if timings:
        _print_json(record.get("timings", {}))


def _print_vector_report(report: dict[str, Any], as_json: bool) -> None:
    """The report of ``dlhub verify`` or ``dlhub test``; exit 1 if a vector failed."""
    if as_json:
        _print_json(report)
    else:
        table = Table(title=f"test vectors of {report['servable']}")
        table.add_column("#", justify="right")
        table.add_column("result")
        table.add_column("inference ms", justify="right")
        table.add_column("message", overflow="fold")
        for vector in report["vectors"]:
            timings = vector.get("timings") or {}
            table.add_row(
                str(vector["index"]),
                "[green]pass[/green]" if vector["passed"] else "[red]FAIL[/red]",
                f"{timings.get('inference_ms', 0.0):.2f}",
                str(vector.get("message", "")),
            )
        if report["vectors"]:
            console.print(table)
        failed = sum(1 for v in report["vectors"] if not v["passed"])
        if report.get("note"):
            console.print(f"{report['servable']}: {report['note']}")
        elif failed:
            console.print(f"[red]{failed} of {len(report['vectors'])} test vector(s) failed[/red]")
        else:
            console.print(f"[green]all {len(report['vectors'])} test vector(s) passed[/green]")
    if not report["passed"]:
        sys.exit(1)


@main.command()
@click.argument("servable")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON report.")
@click.pass_context
def verify(ctx: click.Context, servable: str, as_json: bool) -> None:
    """Re-run the published test vectors of SERVABLE (owner/name[@version]); exit 1 if any fails."""
    with _client(ctx) as client:
        report = client.verify(servable)
    _print_vector_report(report, as_json)


@main.command("test")
@click.argument("metadata_file", default=DEFAULT_METADATA_FILE, type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON report.")
def local_test(metadata_file: Path, as_json: bool) -> None:
    """Run the test vectors of METADATA_FILE on this machine (as `dlhub run --local` runs the servable) and
    compare the outputs as the registry does; exit 1 if any fails. No server is contacted."""
    from dlhub.client.local import verify_local

    _print_vector_report(verify_local(metadata_file), as_json)


@main.command()
@click.argument("task_id")
@click.option("--wait", is_flag=True, help="Block until the task finishes.")
@click.pass_context
def status(ctx: click.Context, task_id: str, wait: bool) -> None:
    """Show the state (and result) of an asynchronous task."""
    with _client(ctx) as client:
        record = client.status(task_id)
        if wait:
            from dlhub.client.sdk import TaskHandle

            record = TaskHandle(client, task_id).wait()
    _print_json(record)


@main.command()
@click.argument("dataset")
@click.argument("servable")
@click.option("--file", "file_path", metavar="PATH", help="The tabular file (default: its only one).")
@click.option("--column", "columns", multiple=True, help="A column each row passes, in order (repeatable).")
@click.option("--method", default="run", show_default=True)
@click.option("--param", "-p", "params", multiple=True, help="key=JSON value (repeatable).")
@click.option("--mode", type=click.Choice(["batch", "row"]), default=None, help="Default: by the input type.")
@click.option("--batch-rows", default=500, show_default=True, help="Rows per call (batch mode).")
@click.option("--output-name", default=None, help="Name of the output dataset (default DATASET-SERVABLE).")
@click.option("--wait", is_flag=True, help="Show the progress until the job ends; exit 1 unless completed.")
@click.option("--timeout-s", default=3600.0, show_default=True, help="With --wait: how long to wait.")
@click.pass_context
def apply(
    ctx: click.Context,
    dataset: str,
    servable: str,
    file_path: str | None,
    columns: tuple[str, ...],
    method: str,
    params: tuple[str, ...],
    mode: str | None,
    batch_rows: int,
    output_name: str | None,
    wait: bool,
    timeout_s: float,
) -> None:
    """Apply SERVABLE (owner/name[@version], a pipeline too) to every row of DATASET's tabular file as an
    asynchronous job; the results become your dataset, linked to both. Prints the task (with --wait, the
    progress, then the ended task)."""
    with _client(ctx) as client:
        handle = client.apply(
            dataset,
            servable,
            method=method,
            parameters=_run_parameters(params) or None,
            file=file_path,
            columns=columns or None,
            mode=mode,
            batch_rows=batch_rows,
            output_name=output_name,
        )
        if not wait:
            _print_json(client.status(handle.task_id))
            return
        record = _follow_job(client, handle.task_id, timeout_s)
    _print_json(record)
    if record["state"] != "completed":
        sys.exit(1)


def _follow_job(client: DLHubClient, task_id: str, timeout_s: float) -> dict[str, Any]:
    """Poll the job, showing ``done/total rows (failed)`` on stderr (one live line on a terminal, a line per
    change otherwise), until it ends."""
    deadline = time.monotonic() + timeout_s
    shown = ""
    live = err_console.is_terminal
    while True:
        record = client.status(task_id)
        progress = record.get("progress") or {}
        total = progress.get("total")
        line = (
            f"{task_id}: {record['state']} {progress.get('done', 0)}/{'?' if total is None else total} rows"
            f" ({progress.get('failed', 0)} failed)"
        )
        if line != shown:
            err_console.print(("\r" if live else "") + line, end="" if live else "\n", highlight=False)
            shown = line
        if record["state"] in ("completed", "failed"):
            if live:
                err_console.print()
            return record
        if time.monotonic() >= deadline:
            _fail(f"task {task_id} still {record['state']} after {timeout_s} s")
        time.sleep(0.5)


@main.command()
@click.argument("task_id")
@click.pass_context
def cancel(ctx: click.Context, task_id: str) -> None:
    """Cancel a dataset job of yours; it ends failed (cancelled) and keeps the rows it did."""
    with _client(ctx) as client:
        _print_json(client.cancel(task_id))


@main.command()
@click.argument("servable")
@click.option("--reason", default="", help="Why the version is deprecated (shown in run warnings).")
@click.option("--replacement", default=None, help="owner/name@version to use instead.")
@click.option("--undo", is_flag=True, help="Clear the deprecation instead.")
@click.pass_context
def deprecate(ctx: click.Context, servable: str, reason: str, replacement: str | None, undo: bool) -> None:
    """Deprecate SERVABLE (owner/name@version): it still runs, with a warning; "latest" skips it."""
    with _client(ctx) as client:
        if undo:
            _print_json(client.undeprecate(servable))
        else:
            _print_json(client.deprecate(servable, reason, replacement=replacement))


@main.command("build-log")
@click.argument("servable")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the build is ready or failed.")
@click.option("--json", "as_json", is_flag=True, help="Print the record (or, following, the events) as JSON.")
@click.pass_context
def build_log(ctx: click.Context, servable: str, follow: bool, as_json: bool) -> None:
    """Print the build record of SERVABLE (owner/name[@version]; default the newest version)."""
    with _client(ctx) as client:
        if not follow:
            record = client.build_log(servable)
            if as_json:
                _print_json(record)
                return
            _print_build_header(record)
            for line in record.get("log") or []:
                click.echo(line)
            if record.get("error"):
                _fail(str(record["error"]))
            return
        state = ""
        for event in client.build_log(servable, follow=True):
            if as_json:
                click.echo(json.dumps(event))
                continue
            if "servable" in event:
                _print_build_header(event)
                for line in event.get("log") or []:
                    click.echo(line)
                state = event["state"]
                continue
            if event.get("state"):
                state = event["state"]
                err_console.print(f"-- {state} at {event.get('at', '')}", highlight=False)
            for line in event.get("lines") or []:
                click.echo(line)
            if event.get("error"):
                err_console.print(f"[red]error:[/red] {escape(event['error'])}")
        if state == "failed":
            sys.exit(1)


def _print_build_header(record: dict[str, Any]) -> None:
    states = ", ".join(f"{s['state']} {s['at']}" for s in record.get("states") or [])
    environment = record.get("environment") or "shared"
    err_console.print(
        f"{record['servable']}: {record['state']} (environment {environment}); {states}", highlight=False
    )


@main.command()
@click.argument("servable")
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Archive file to write."
)
@click.option(
    "--image",
    is_flag=True,
    help="A docker save tarball of a self-contained image instead (docker-environment versions).",
)
@click.option("--run", "show_run", is_flag=True, help="Also print the commands that run it elsewhere.")
@click.pass_context
def export(ctx: click.Context, servable: str, output: Path | None, image: bool, show_run: bool) -> None:
    """Download SERVABLE (owner/name[@version]) as a .tar.gz that runs with a plain Python venv, or with
    --image as an image (docker load -i FILE; docker run --rm -i --network none TAG '<json input>')."""
    with _client(ctx) as client:
        path = client.export(servable, output, image=image)
    err_console.print(f"wrote {path}", highlight=False)
    if show_run:
        for command in image_commands(path) if image else export_commands(path):
            click.echo(command)


@main.command()
@click.argument("servable")
@click.option(
    "--file", "file_path", metavar="PATH", help="Only this file of the package (as `--list` shows)."
)
@click.option(
    "-o",
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder to write to (default: ./NAME for the package, . for one file).",
)
@click.option("--list", "list_only", is_flag=True, help="List the files (path, size, sha256) instead.")
@click.pass_context
def download(
    ctx: click.Context, servable: str, file_path: str | None, output: Path | None, list_only: bool
) -> None:
    """Download the files of SERVABLE (owner/name[@version], default the version describe shows): the
    whole package extracted into a folder, or one file with --file; each checked against its digest."""
    with _client(ctx) as client:
        if list_only:
            listing = client.files(servable)
            for entry in listing["files"]:
                click.echo(f"{entry['size']:>12}  {entry['sha256']}  {entry['path']}")
            return
        name = servable.partition("@")[0].rpartition("/")[2]
        if file_path is not None:
            if output is not None:
                output.mkdir(parents=True, exist_ok=True)
            path = client.download(servable, output or Path("."), file_path)
        else:
            path = client.download(servable, output or Path(name))
    err_console.print(f"wrote {path}", highlight=False)


def image_commands(path: Path) -> list[str]:
    """``docker load`` of this very file, then ``docker run`` of the image it holds."""
    import shlex

    from dlhub.client.sdk import image_tag

    try:
        tag = image_tag(path)
    except (OSError, ValueError, KeyError) as exc:
        _fail(f"{path} is not an image export: {exc}")
    return [
        f"docker load -i {shlex.quote(str(path.resolve()))}",
        f"docker run --rm -i --network none {shlex.quote(tag)} '<json input>'",
    ]


def export_commands(path: Path) -> list[str]:
    """The commands in the archive's ``export.json``, unpacking this very file."""
    import shlex
    import tarfile

    with tarfile.open(path, "r:gz") as archive:
        member = next((m for m in archive.getmembers() if m.name.endswith("/export.json")), None)
        handle = archive.extractfile(member) if member is not None else None
        if handle is None:
            _fail(f"{path} has no export.json")
        commands: list[str] = json.loads(handle.read())["commands"]
    if commands and commands[0].startswith("tar xzf "):
        commands[0] = f"tar xzf {shlex.quote(str(path.resolve()))}"
    return commands


if __name__ == "__main__":
    main()
