"""Drives fake-bunq with bunq's official Python SDK (`bunq-sdk` on PyPI).

Usage: official_sdk_session.py BASE_URL PARTNER_KEY_FILE   (e.g. http://127.0.0.1:PORT/v1)

`ApiContext.create` runs installation -> device-server -> session-server exactly as
against bunq, including the SDK's own checks: positional deserialisation of the
Response arrays, and verification of X-Bunq-Server-Signature on every 200 after
installation. Exits non-zero on any failure.
"""

import json
import secrets
import sys
import time
import urllib.request

from bunq.sdk.context.api_context import ApiContext
from bunq.sdk.context.api_environment_type import ApiEnvironmentType
from bunq.sdk.context.bunq_context import BunqContext
from bunq.sdk.context.user_context import UserContext
from bunq.sdk.http.api_client import ApiClient
from bunq.sdk.exception.api_exception import ApiException
from bunq.sdk.exception.bad_request_exception import BadRequestException
from bunq.sdk.exception.too_many_requests_exception import TooManyRequestsException


def point_sdk_at(base_url: str) -> None:
    # The SDK builds URLs as `environment.uri_base + "installation"`, with uri_base
    # read from the enum member's `_uri_base` attribute (bunq/sdk/context/
    # api_environment_type.py). Rebinding it is the least invasive redirect.
    ApiEnvironmentType.SANDBOX._uri_base = base_url.rstrip("/") + "/"


def admin(base_url: str, method: str, path: str, body=None):
    root = base_url.rstrip("/").rsplit("/v1", 1)[0]
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(root + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
        return json.loads(raw) if raw else None


WANTED = [("USER_ONBOARDING", "https://partner.example/hooks/onboarding"),
          ("PAYMENT", "https://partner.example/hooks/payment")]


def notification_filters_through_the_sdk(context: ApiContext):
    """Sets WANTED (replace-all) and lists what bunq holds, as the SDK's user."""
    # The released SDK's list-response helper imports two names its generated modules
    # no longer define; they are the same classes under their new names.
    from bunq.sdk.model.generated import endpoint, object_
    endpoint.NotificationFilterUrlUser = endpoint.NotificationFilterUrlApiObject
    object_.NotificationFilterUrl = object_.NotificationFilterUrlObject
    from bunq.sdk.model.core.notification_filter_url_user_internal import NotificationFilterUrlUserInternal
    # BunqContext.load_api_context would also read the user's monetary accounts, which a
    # freshly provisioned user of the stand-in does not have; the user id is all we need.
    BunqContext._api_context = context
    BunqContext._user_context = UserContext(context.session_context.user_id,
                                            context.session_context.get_user_reference())
    created = NotificationFilterUrlUserInternal.create_with_list_response(
        [object_.NotificationFilterUrlObject(category, target) for category, target in WANTED])
    assert [(f.category, f.notification_target) for f in created.value] == WANTED, created.value
    # `NotificationFilterUrlApiObject.list()` reads each element as the wrapper class,
    # which has no `category`; the SDK's own GET and element parser read them right.
    path = f"user/{context.session_context.user_id}/notification-filter-url"
    listed = object_.NotificationFilterUrlObject._from_json_list(ApiClient(context).get(path, {}, {}),
                                                                  "NotificationFilterUrl")
    return listed.value


def provision(client: ApiClient, provision_id: int) -> dict:
    raw = client.get(f"partner-user-provision/{provision_id}", {}, {})
    return json.loads(raw.body_bytes)["Response"][0]["PartnerUserProvision"]


def token_reset_through_the_sdk(base_url: str, partner_key: str) -> None:
    """The partner's own session (UserCompany) resets an expired provision's token with
    the SDK's signed PUT and GET; the new token opens the user's session."""
    partner = ApiContext.create(ApiEnvironmentType.SANDBOX, partner_key, "fake-bunq sdk partner", ["*"])
    company = partner.session_context.user_company
    assert company is not None, "partner session not read as UserCompany"
    assert partner.session_context.user_id == company.id_, (partner.session_context.user_id, company.id_)
    assert company.session_timeout == 604800, company.session_timeout

    refused_before = admin(base_url, "GET", "/_fake/stats")["refused_expired_tokens"]
    expired = "sandbox_" + secrets.token_hex(24)
    admin(base_url, "POST", "/_fake/provisions",
          {"id": 7, "token_value": expired, "expiry_time": "2000-01-01 00:00:00.000000"})
    try:
        ApiContext.create(ApiEnvironmentType.SANDBOX, expired, "fake-bunq sdk user", ["*"])
    except BadRequestException as error:
        assert "User credentials are incorrect" in str(error), str(error)
    else:
        raise AssertionError("expired provision token was accepted")

    client = ApiClient(partner)
    reset = client.put("partner-user-provision/7", b'{"status":"TOKEN_RESET_REQUESTED"}', {})
    assert json.loads(reset.body_bytes) == {"Response": [{"Id": {"id": 7}}]}, reset.body_bytes
    # GET allows 3 calls per 3 s: read once a second.
    for _ in range(30):
        current = provision(client, 7)
        credential = current["credential"]
        if current["sub_status"] != "PENDING_PROCESS_TOKEN_RESET" and credential["token_value"]:
            break
        time.sleep(1.1)
    else:
        raise AssertionError("no new token within 30 s")
    assert credential["status"] == "PENDING_FIRST_USE" and credential["token_value"] != expired, credential
    user = ApiContext.create(ApiEnvironmentType.SANDBOX, credential["token_value"], "fake-bunq sdk user", ["*"])
    assert user.session_context.user_api_key is not None, "user session not read as UserApiKey"
    assert provision(client, 7)["credential"]["token_value"] is None, "token still shown once used"
    stats = admin(base_url, "GET", "/_fake/stats")
    assert stats["token_resets"] == 1 and stats["refused_expired_tokens"] == refused_before + 1, stats
    print(f"partner token reset OK: company {company.id_}, provision 7 reopened as user {user.session_context.user_id}")


def main() -> int:
    base_url = sys.argv[1]
    point_sdk_at(base_url)
    with open(sys.argv[2], encoding="ascii") as key_file:
        partner_key = key_file.read().strip()

    secret = "sandbox_" + secrets.token_hex(24)
    context = ApiContext.create(ApiEnvironmentType.SANDBOX, secret, "fake-bunq sdk test", ["*"])

    session = context.session_context
    assert session is not None, "no session context"
    assert len(session.token) == 64, f"session token has {len(session.token)} chars"
    assert isinstance(session.user_id, int) and session.user_id > 0, session.user_id
    user_api_key = session.user_api_key
    assert user_api_key is not None, "session-server answer not read as UserApiKey"
    granted = user_api_key.granted_by_user.get_referenced_object()
    requested = user_api_key.requested_by_user.get_referenced_object()
    assert granted.id_ > 0 and requested.id_ > 0, (granted.id_, requested.id_)
    assert requested.session_timeout == 604800, requested.session_timeout
    print(f"session opened: user_api_key_id={session.user_id} "
          f"granted_user_person_id={granted.id_} expiry={session.expiry_time.isoformat()}")

    # A second context for the same secret: same user ids, a new session.
    again = ApiContext.create(ApiEnvironmentType.SANDBOX, secret, "fake-bunq sdk test 2", ["*"])
    assert again.session_context.user_id == session.user_id, "user id not stable per secret"
    assert again.session_context.token != session.token, "session token reused"

    # The SDK's session refresh (session-server only, same installation) inside 30 s
    # meets bunq's session-server limit; the SDK surfaces bunq's 429 message.
    try:
        context.reset_session()
    except TooManyRequestsException as error:
        assert ("Too many requests. You can do a maximum of 1 calls per 30 second "
                "to this endpoint.") in str(error), str(error)
    else:
        raise AssertionError("second session-server call within 30 s was not limited")

    # An expired credential is refused with bunq's 400 Error body, which the SDK maps
    # to BadRequestException.
    expired = "sandbox_" + secrets.token_hex(24)
    admin(base_url, "POST", "/_fake/credentials", {"secret": expired, "state": "EXPIRED"})
    try:
        ApiContext.create(ApiEnvironmentType.SANDBOX, expired, "fake-bunq sdk test", ["*"])
    except BadRequestException as error:
        assert "User credentials are incorrect" in str(error), str(error)
    else:
        raise AssertionError("expired credential was accepted")

    # The session's purpose: the provisioned user's notification filters, set and listed
    # with the SDK's own calls (NotificationFilterUrlUserInternal.create_with_list_response,
    # then a GET through its client), authenticated with the session and signed.
    filters = notification_filters_through_the_sdk(again)
    assert [(f.category, f.notification_target) for f in filters] == WANTED, filters
    calls = admin(base_url, "GET", "/_fake/calls")
    posts = [c for c in calls if c["endpoint"] == "notification-filter-url" and c["method"] == "POST"]
    assert len(posts) == 1 and posts[0]["status"] == 200 and posts[0]["signature_valid"] is True, posts

    # Closing the session: DELETE /session/0 through the SDK's own client (its
    # `close_session` raises NameError: it never imports `Session`), signed and
    # authenticated as the SDK does it, with the session token.
    ApiClient(again).delete("session/0", {})
    calls = admin(base_url, "GET", "/_fake/calls")
    deletes = [c for c in calls if c["endpoint"] == "session"]
    assert len(deletes) == 1 and deletes[0]["method"] == "DELETE" and deletes[0]["status"] == 200, deletes
    assert deletes[0]["signature_valid"] is not False, deletes
    # The token no longer authenticates.
    try:
        ApiClient(again).delete("session/0", {})
    except ApiException as error:
        assert "Insufficient authentication" in str(error), str(error)
    else:
        raise AssertionError("an ended session still authenticated")

    signed = [c for c in calls
              if c["endpoint"] in ("device-server", "session-server") and c["status"] == 200]
    assert signed and all(c["signature_valid"] for c in signed), signed
    assert all(secret not in json.dumps(c) for c in calls), "secret leaked into call records"

    token_reset_through_the_sdk(base_url, partner_key)
    calls = admin(base_url, "GET", "/_fake/calls")
    assert all(partner_key not in json.dumps(c) for c in calls), "partner key leaked into call records"
    print(f"official SDK handshake OK ({len(calls)} calls recorded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
