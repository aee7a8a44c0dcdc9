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
from urllib.parse import unquote, urlsplit, urlunsplit

from forgeflow.errors import InvalidInput

CONFIG_FILE = "workspace.json"
DATABASE_URL_ENV = "FORGEFLOW_DATABASE_URL"
# MLflow 3's own tables (jobs, endpoints, users, secrets, ...) share names with forgeflow's: on Postgres MLflow gets
# a schema of its own in the workspace database, reached through the connection's search_path.
MLFLOW_SCHEMA = "mlflow"
POSTGRES = "postgresql+psycopg"
MASK = "***"
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
    secrets = doc.get("passwords") or {}
    values = {}
    for name in ("database_url", "mlflow_uri", "artifacts_root", "mlflow_artifacts"):
        value = doc.get(name)
        if value and name in secrets:
            value = with_password(value, decrypt(secrets[name]))
        values[name] = value
    return WorkspaceConfig(**values)


def dump(config: WorkspaceConfig, encrypt) -> bytes:
    """The file's bytes: URLs without their passwords, each password encrypted by `encrypt` under `passwords`."""
    doc: dict = {}
    passwords = {}
    for name, value in asdict(config).items():
        if value is None:
            continue
        public, password = split_password(value)
        doc[name] = public
        if password is not None:
            passwords[name] = encrypt(password)
    if passwords:
        doc["passwords"] = passwords
    return (json.dumps(doc, indent=2) + "\n").encode()


def split_password(url: str) -> tuple[str, str | None]:
    """`url` without the password of its user part, and that password (still percent-encoded) or None."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    if not colon:
        return url, None
    return urlunsplit(parts._replace(netloc=f"{user}@{hostport}")), password


def with_password(url: str, password: str) -> str:
    parts = urlsplit(url)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    return urlunsplit(parts._replace(netloc=f"{userinfo}:{password}@{hostport}"))


def mask(url: str | None) -> str | None:
    """The URL as it may be shown: its password replaced by ***."""
    if not url:
        return url
    public, password = split_password(url)
    return url if password is None else with_password(public, MASK)


def password_env(uri: str) -> tuple[str, dict[str, str]]:
    """`uri` without its password, and the environment that hands the password to a worker instead: PGPASSWORD
    (libpq reads it) for Postgres, MLflow's MLFLOW_TRACKING_USERNAME/PASSWORD for an MLflow server."""
    public, password = split_password(uri)
    if password is None:
        return uri, {}
    if uri.startswith(("http://", "https://")):
        parts = urlsplit(public)
        user, _, hostport = parts.netloc.rpartition("@")
        bare = urlunsplit(parts._replace(netloc=hostport))
        return bare, {"MLFLOW_TRACKING_USERNAME": unquote(user), "MLFLOW_TRACKING_PASSWORD": unquote(password)}
    return public, {"PGPASSWORD": unquote(password)}


def check_database_url(url: str, field: str = "database_url") -> str:
    """A store URL forgeflow can use, normalized (postgres:// and postgresql:// mean psycopg); InvalidInput
    naming `field` otherwise."""
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidInput(f"{field}: {mask(url)!r} is not a URL: use sqlite:///FILE or "
                           f"{POSTGRES}://USER:PASSWORD@HOST:PORT/DATABASE", field=field)
    if scheme in ("postgres", "postgresql", POSTGRES):
        if not urlsplit(url).hostname and "host=" not in url:
            raise InvalidInput(f"{field}: {mask(url)!r} names no host: use "
                               f"{POSTGRES}://USER:PASSWORD@HOST:PORT/DATABASE", field=field)
        if not urlsplit(url).path.strip("/"):
            raise InvalidInput(f"{field}: {mask(url)!r} names no database: add /DATABASE after the host", field=field)
        return f"{POSTGRES}://{rest}"
    if scheme == "sqlite":
        if not rest.startswith("//") or rest == "//":  # sqlite:////abs/path: three slashes, then the path's own
            raise InvalidInput(f"{field}: {url!r} names no file by its absolute path: use sqlite:////PATH/FILE.db",
                               field=field)
        return url
    raise InvalidInput(f"{field}: unknown scheme {scheme!r}: forgeflow's store is sqlite:///FILE (the default) or "
                       f"{POSTGRES}://USER:PASSWORD@HOST:PORT/DATABASE", field=field)


def check_mlflow_uri(uri: str) -> str:
    """An MLflow tracking URI forgeflow can use: an MLflow server or a database URL."""
    uri = uri.strip()
    if uri.startswith(("http://", "https://")):
        if not urlsplit(uri).hostname:
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
