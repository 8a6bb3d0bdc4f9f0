#!/usr/bin/env python3
"""Writes the seed corpus of the fuzz targets (fuzz/corpus/*): the hostile shapes the
worker must survive, each carrying a credential-like secret that must never reach an
error. The corpus is committed and replayed by ordinary tests in `make test`."""
import json
import pathlib

SECRET = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
root = pathlib.Path(__file__).resolve().parent.parent / "fuzz" / "corpus"


def provision(credential, status="CREATED", sub="PENDING_PROCESS_USER_ONBOARDING", pid=7):
    return {"PartnerUserProvision": {"id": pid, "status": status, "sub_status": sub, "credential": credential}}


good = provision({"id": 9, "status": "PENDING_FIRST_USE", "expiry_time": "2099-01-01 00:00:00.000000", "token_value": SECRET})
webhook = {"NotificationUrl": {"category": "PARTNER_USER_PROVISION", "object": good}}
events = {
    "good_object": json.dumps(good),
    "good_webhook": json.dumps(webhook),
    "double_encoded": json.dumps(json.dumps(webhook)),
    "token_as_number": json.dumps(provision({"token_value": 9 ** 80})),
    "token_in_array": json.dumps(provision({"token_value": [SECRET]})),
    "object_for_string": json.dumps(provision({"token_value": {"value": SECRET}})),
    "string_for_object": json.dumps(provision(SECRET)),
    "secret_as_id": json.dumps(provision(None, pid=SECRET)),
    "huge_field_name": json.dumps({"k" * 100_000 + SECRET: 1}),
    "secret_unknown_field": json.dumps({SECRET: {}}),
    "secret_unknown_inner_field": json.dumps({"PartnerUserProvision": {"id": 7, SECRET: SECRET}}),
    "nested_10000": '{"x":"%s","y":%s%s}' % (SECRET, "[" * 10_000, "]" * 10_000),
    "expiry_is_secret": json.dumps(provision({"expiry_time": SECRET, "token_value": SECRET})),
    "truncated": json.dumps(good)[:-20],
    "both_shapes": json.dumps({**good, **webhook}),
}
binary_events = {
    "invalid_utf8": b'{"PartnerUserProvision":{"id":7,"x":"' + SECRET.encode() + b"\xff\xfe" + SECRET.encode() + b'"}}',
    "nul_bytes": b"\x00" * 16 + SECRET.encode(),
}
responses = {
    "session_ok": json.dumps({"Response": [{"Id": {"id": 1}}, {"Token": {"id": 1, "token": SECRET}},
                                            {"UserApiKey": {"id": 5, "granted_by_user": {"UserPerson": {"id": 6, "session_timeout": 900}}}}]}),
    "token_as_string": json.dumps({"Response": [{"Id": {"id": 1}}, {"Token": SECRET}]}),
    "token_in_array": json.dumps({"Response": [{"Id": {"id": 1}}, {"Token": {"token": [SECRET]}}]}),
    "id_is_secret": json.dumps({"Response": [{"Id": {"id": SECRET}}, {"Token": {"token": "t"}}]}),
    "flat_token": json.dumps({"Token": SECRET}),
    "response_is_string": json.dumps({"Response": SECRET}),
    "user_id_is_secret": json.dumps({"Response": [{"Id": {"id": 1}}, {"Token": {"token": "t"}}, {"UserApiKey": {"id": SECRET}}]}),
    "server_key_garbage": json.dumps({"Response": [{"Id": {"id": 1}}, {"Token": {"token": SECRET}},
                                                    {"ServerPublicKey": {"server_public_key": "-----BEGIN PUBLIC KEY-----\n" + SECRET + "\n-----END PUBLIC KEY-----\n"}}]}),
    "error_body": json.dumps({"Error": [{"error_description": "bad " + SECRET}]}),
    "html": "<html>502 " + SECRET + "</html>",
    "nested_10000": "[" * 10_000 + "]" * 10_000,
}
for target, cases in [("event_decode", events), ("bunq_response", responses)]:
    (root / target).mkdir(parents=True, exist_ok=True)
    for name, text in cases.items():
        (root / target / name).write_text(text)
for name, data in binary_events.items():
    (root / "event_decode" / name).write_bytes(data)
print("corpus written to", root)
