"""Where a workspace keeps its state, as chosen at `forgeflow init`: the store's database, MLflow's tracking and
registry store, and the artifacts root every server reaches. Kept in HOME/workspace.json (mode 600); a password in
a URL is kept apart from it, encrypted with the workspace key, and shown masked everywhere. FORGEFLOW_DATABASE_URL
overrides the file's database URL (a server started by a service manager, tests).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from collections.abc import Mapping
from urllib.parse import quote, unquote

from forgeflow.errors import InvalidInput

CONFIG_FILE = "workspace.json"
DATABASE_URL_ENV = "FORGEFLOW_DATABASE_URL"
# MLflow 3's own tables (jobs, endpoints, users, secrets, ...) share names with forgeflow's: on Postgres MLflow gets
# a schema of its own in the workspace database, reached through the connection's search_path.
MLFLOW_SCHEMA = "mlflow"
POSTGRES = "postgresql+psycopg"
MASK = "***"
USER_PASSWORD = ""  # split_password's key for the password of a URL's user part
QUERY_PASSWORDS = ("password", "sslpassword")  # query parameters libpq reads as passwords
QUERY_PASSWORDS_ENV = "FORGEFLOW_URI_QUERY_PASSWORDS"  # a worker's: the query passwords of its MLflow URI, as JSON
# Object stores MLflow can keep artifacts in, and the library it needs for each.
OBJECT_STORES = {"s3": ("boto3", "boto3"), "gs": ("google.cloud.storage", "google-cloud-storage"),
                 "wasbs": ("azure.storage.blob", "azure-storage-blob")}


@dataclass(frozen=True)
class WorkspaceConfig:
    """The choices made at init; None means the embedded default (SQLite and folders in the home)."""

    database_url: str | None = None
    """SQLAlchemy URL of the store: sqlite:///FILE or postgresql+psycopg://USER[:PASSWORD]@HOST[:PORT]/DB."""
    mlflow_uri: str | None = None
    """MLflow tracking and registry: an MLflow server (http(s)://...) or a database URL."""
    artifacts_root: str | None = None
    """A directory every server (and every cluster node) reaches: datasets, job folders, models, flows."""
    mlflow_artifacts: str | None = None
    """Where MLflow keeps the artifacts of new experiments: a directory or an object store URI."""


def load(config_file: Path, decrypt) -> WorkspaceConfig:
    """The saved choices, with their passwords decrypted by `decrypt` (the workspace SecretBox's)."""
    try:
        doc = json.loads(config_file.read_text())
    except FileNotFoundError:
        return WorkspaceConfig()
    except ValueError:
        raise InvalidInput(f"{config_file} is not valid JSON: fix it or run forgeflow init again") from None
    passwords = doc.get("passwords") or {}
    in_queries = doc.get("query_passwords") or {}
    values = {}
    for name in ("database_url", "mlflow_uri", "artifacts_root", "mlflow_artifacts"):
        value = doc.get(name)
        found = {key: decrypt(v) for key, v in (in_queries.get(name) or {}).items()}
        if name in passwords:
            found[USER_PASSWORD] = unquote(decrypt(passwords[name]))  # kept percent-encoded, as in the URL
        values[name] = with_passwords(value, found) if value and found else value
    return WorkspaceConfig(**values)


def dump(config: WorkspaceConfig, encrypt) -> bytes:
    """The file's bytes: URLs without their passwords, each password encrypted by `encrypt`: the user part's under
    `passwords`, a query parameter's (password, sslpassword) under `query_passwords`."""
    doc: dict = {}
    passwords, in_queries = {}, {}
    for name, value in asdict(config).items():
        if value is None:
            continue
        public, found = split_password(value)
        doc[name] = public
        if USER_PASSWORD in found:
            passwords[name] = encrypt(quote(found.pop(USER_PASSWORD), safe=""))
        if found:
            in_queries[name] = {key: encrypt(v) for key, v in found.items()}
    if passwords:
        doc["passwords"] = passwords
    if in_queries:
        doc["query_passwords"] = in_queries
    return (json.dumps(doc, indent=2) + "\n").encode()


def _parse(url: str):
    """`url` read as SQLAlchemy reads it (its password ends at the last '@' before the host, so it may hold '/',
    '?' or '#'), or None when it is no URL SQLAlchemy can read."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except (ArgumentError, ValueError, TypeError):
        return None


def split_password(url: str) -> tuple[str, dict[str, str]]:
    """`url` without its passwords, and those passwords (decoded) by where they were: USER_PASSWORD for the user
    part's, the parameter's name for a query's (QUERY_PASSWORDS). Read as SQLAlchemy reads the URL, so what the
    database is sent as a password is what is taken out."""
    parsed = _parse(url)
    if parsed is None:
        return url, {}
    found = {key: _one(parsed.query[key]) for key in QUERY_PASSWORDS if key in parsed.query}
    if parsed.password is not None:
        found[USER_PASSWORD] = parsed.password
    if not found:
        return url, {}
    return _render(parsed, password=None, query={k: v for k, v in parsed.query.items() if k not in found}), found


def with_passwords(url: str, found: dict[str, str]) -> str:
    """`url` (as split_password left it) with its passwords put back."""
    parsed = _parse(url)
    if parsed is None:
        return url
    query = dict(parsed.query) | {k: v for k, v in found.items() if k != USER_PASSWORD}
    return _render(parsed, password=found.get(USER_PASSWORD, parsed.password), query=query)


def _render(parsed, *, password: str | None, query: dict, hide: bool = False) -> str:
    from sqlalchemy.engine import URL

    return URL.create(parsed.drivername, parsed.username, password, parsed.host, parsed.port, parsed.database,
                      query).render_as_string(hide_password=hide)


def _one(value: str | tuple[str, ...]) -> str:
    """A query parameter given twice counts as its last value, as libpq reads it."""
    return value if isinstance(value, str) else value[-1]


def mask(url: str | None) -> str | None:
    """The URL as it may be shown: each password (the user part's, a query's) replaced by ***. A text that looks like
    a URL (or a user part) that SQLAlchemy cannot read is shown by its scheme alone: where a password would be in it
    cannot be told. A path is shown as it is."""
    if not url:
        return url
    parsed = _parse(url)
    if parsed is None:
        scheme, sep, _ = url.partition("://")
        return f"{scheme}://{MASK}" if sep else MASK if "@" in url else url
    secret = [key for key in QUERY_PASSWORDS if key in parsed.query]
    if parsed.password is None and not secret:
        return url
    rest = {k: v for k, v in parsed.query.items() if k not in secret}
    shown = _render(parsed, password=parsed.password, query=rest, hide=True)
    # the masked parameters go last, unquoted, so they read *** rather than %2A%2A%2A
    return shown + "".join(f"{'&' if rest or i else '?'}{key}={MASK}" for i, key in enumerate(secret))


def password_env(uri: str) -> tuple[str, dict[str, str]]:
    """`uri` without its passwords, and the environment that hands them to a worker instead: PGPASSWORD (libpq
    reads it) for Postgres, MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD for an MLflow server, and a query's
    passwords (sslpassword has no variable of libpq's) in QUERY_PASSWORDS_ENV, which `worker_uri` puts back."""
    public, found = split_password(uri)
    if not found:
        return uri, {}
    env: dict[str, str] = {}
    in_query = {k: v for k, v in found.items() if k != USER_PASSWORD}
    if in_query:
        env[QUERY_PASSWORDS_ENV] = json.dumps(in_query)
    password = found.get(USER_PASSWORD)
    if uri.startswith(("http://", "https://")):
        parsed = _parse(public)
        if password is not None:
            env |= {"MLFLOW_TRACKING_USERNAME": parsed.username or "", "MLFLOW_TRACKING_PASSWORD": password}
            public = _render(parsed._replace(username=None), password=None, query=dict(parsed.query))
        return public, env
    if password is not None:
        env["PGPASSWORD"] = password
    return public, env


def worker_uri(public: str, environ: Mapping[str, str]) -> str:
    """In a worker: the URI its job file names with the query passwords its environment holds put back (see
    password_env; PGPASSWORD and MLflow's variables are read by libpq and MLflow themselves)."""
    extra = environ.get(QUERY_PASSWORDS_ENV)
    return with_passwords(public, json.loads(extra)) if extra else public


def check_database_url(url: str, field: str = "database_url") -> str:
    """A store URL forgeflow can use, normalized (postgres:// and postgresql:// mean psycopg); InvalidInput
    naming `field` otherwise."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidInput(f"{field}: {mask(url)!r} is not a URL: use sqlite:///FILE or "
                           f"{POSTGRES}://USER:PASSWORD@HOST:PORT/DATABASE", field=field)
    if scheme in ("postgres", "postgresql", POSTGRES):
        parsed = _parse(url)
        if parsed is None:
            raise InvalidInput(f"{field}: {mask(url)!r} is not a URL SQLAlchemy can read: use "
                               f"{POSTGRES}://USER:PASSWORD@HOST:PORT/DATABASE (a '@' in the password as %40)",
                               field=field)
        if not parsed.host and "host" not in parsed.query:
            raise InvalidInput(f"{field}: {mask(url)!r} names no host: use "
                               f"{POSTGRES}://USER:PASSWORD@HOST:PORT/DATABASE", field=field)
        if not (parsed.database or "").strip("/"):
            raise InvalidInput(f"{field}: {mask(url)!r} names no database: add /DATABASE after the host", field=field)
        return f"{POSTGRES}://{rest}"
    if scheme == "sqlite":
        if not rest.startswith("//") or rest == "//":  # sqlite:////abs/path: three slashes, then the path's own
            raise InvalidInput(f"{field}: {mask(url)!r} names no file by its absolute path: use sqlite:////PATH/FILE.db",
                               field=field)
        return url
    raise InvalidInput(f"{field}: unknown scheme {scheme!r}: forgeflow's store is sqlite:///FILE (the default) or "
                       f"{POSTGRES}://USER:PASSWORD@HOST:PORT/DATABASE", field=field)


def check_mlflow_uri(uri: str) -> str:
    """An MLflow tracking URI forgeflow can use: an MLflow server or a database URL."""
    uri = uri.strip()
    if uri.startswith(("http://", "https://")):
        if not getattr(_parse(uri), "host", None):
            raise InvalidInput(f"mlflow_uri: {mask(uri)!r} names no host", field="mlflow_uri")
        return uri.rstrip("/")
    if uri.partition("://")[0] not in ("sqlite", "postgres", "postgresql", POSTGRES):
        raise InvalidInput(f"mlflow_uri: {mask(uri)!r} is neither an MLflow server (http(s)://HOST:PORT) nor a "
                           f"database URL (sqlite:///FILE, {POSTGRES}://USER:PASSWORD@HOST:PORT/DATABASE)",
                           field="mlflow_uri")
    return check_database_url(uri, field="mlflow_uri")


def check_artifacts_root(root: str, field: str = "artifacts_root") -> str:
    """A directory path (created if missing); object stores hold MLflow's artifacts only (mlflow_artifacts)."""
    root = root.strip()
    if "://" in root:
        raise InvalidInput(f"{field}: {root!r} is not a directory: datasets and job folders need a filesystem every "
                           "server mounts (e.g. NFS); put MLflow's artifacts in an object store with "
                           "--mlflow-artifacts instead", field=field)
    path = Path(root).expanduser()
    if not path.is_absolute():
        raise InvalidInput(f"{field}: {root!r} is relative: give an absolute path every server mounts alike",
                           field=field)
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".forgeflow-write-check"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise InvalidInput(f"{field}: {path} cannot be written ({exc.strerror or exc})", field=field) from None
    return str(path.resolve())


def check_mlflow_artifacts(location: str) -> str:
    """A directory, or an object store URI whose client library is installed (MLflow uploads through it)."""
    location = location.strip()
    scheme, sep, _ = location.partition("://")
    if not sep:
        return check_artifacts_root(location, field="mlflow_artifacts")
    if scheme not in OBJECT_STORES:
        raise InvalidInput(f"mlflow_artifacts: {scheme}:// is not supported: use a directory or one of "
                           f"{', '.join(s + '://' for s in OBJECT_STORES)}", field="mlflow_artifacts")
    module, package = OBJECT_STORES[scheme]
    if not _installed(module):
        raise InvalidInput(f"mlflow_artifacts: MLflow reaches {scheme}:// through {package}, which is not installed "
                           f"on this server: pip install {package}, or use a directory", field="mlflow_artifacts")
    return location


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # its parent package is missing
        return False
