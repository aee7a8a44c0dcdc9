"""Who may call an endpoint: in key mode, either of its keys; in token mode, a token its primary key signed
(serving/auth.py) and, when the endpoint names `allowed_users`, those users with their own personal access tokens
(as Azure's endpoints take AAD tokens). Users and tokens are store/identity.py's; this module checks a list against
them and a presented credential against an endpoint's view.

Keys and signed tokens are checked in memory. A personal token is looked up in the store at every request (one
query, no cache), so a revoked one is refused at once on every server; the gateway waits for that lookup on a
worker thread, never on its event loop.
"""

from __future__ import annotations

from starlette.concurrency import run_in_threadpool

from forgeflow.errors import Forbidden, InvalidInput
from forgeflow.serving.auth import verify_token
from forgeflow.serving.records import EndpointConfig
from forgeflow.store.identity import TOKEN_PREFIX, Identity, check_user_name
from forgeflow.store.secrets import same

MAX_ALLOWED_USERS = 1000


def check_allowed_users(identity: Identity, users: list[str] | None) -> list[str] | None:
    """allowed_users as stored: users that exist, each once (None: no restriction)."""
    if users is None:
        return None
    if not isinstance(users, list) or len(users) > MAX_ALLOWED_USERS:
        raise InvalidInput(f"allowed_users must be a list of at most {MAX_ALLOWED_USERS} user names",
                           field="allowed_users")
    for user in users:
        check_user_name(user, field="allowed_users")
    known = identity.existing(users)
    for user in users:
        if user not in known:
            raise InvalidInput(f"allowed_users names {user!r}, who is not a user (see: forgeflow user list)",
                               field="allowed_users")
    return list(dict.fromkeys(users))


async def authorize(identity: Identity, cfg: EndpointConfig, presented: str | None) -> bool:
    """Whether `presented` opens the endpoint. Key mode: either key, both compared every time so timing does not say
    which matched. Token mode: an unexpired token signed for this endpoint, or a user's token (`user_may_call`)."""
    if cfg.auth_mode == "token":
        return (verify_token(cfg.primary, cfg.name, presented)
                or await user_may_call(identity, cfg.name, cfg.allowed_users, presented))
    ok_primary = same(presented, cfg.primary)
    ok_secondary = same(presented, cfg.secondary)
    return ok_primary or ok_secondary


async def user_may_call(identity: Identity, endpoint: str, allowed_users: list[str] | None,
                        presented: str | None) -> bool:
    """Whether `presented` is a live personal access token of a user the endpoint allows. A live token of anyone
    else is Forbidden (a known identity without access, as Azure answers). No lookup at all when the endpoint
    allows no users or what was presented is no personal token."""
    if allowed_users is None or not presented or not presented.startswith(TOKEN_PREFIX):
        return False
    principal = await run_in_threadpool(identity.personal, presented)
    if principal is not None and principal.user not in allowed_users:
        raise Forbidden(f"user {principal.user!r} is not among the users endpoint {endpoint!r} allows (a "
                        f"contributor adds one with: forgeflow online-endpoint update --name {endpoint} "
                        "--allowed-users ...)")
    return principal is not None
