"""The OpenAPI 3.1 document of the admin API: the migration dashboard's endpoints and the one-time
SCEP challenge endpoint of gateway.admin. Served by gateway.dashboard at /admin/api/openapi.json."""

from __future__ import annotations

from typing import Any

from migration_tools.report import DEFAULT_TREND_DAYS, MAX_TREND_DAYS
from migration_tools.report_rows import DEVICE_COLUMNS
from shared_ca.storage.schema import DEVICE_STATES

OPENAPI_VERSION = "3.1.0"


def _nullable(kind: str, **extra: Any) -> dict[str, Any]:
    return {"type": [kind, "null"], **extra}


def _time() -> dict[str, Any]:
    return _nullable("string", format="date-time", description="UTC, ISO 8601 with Z")


def _object(properties: dict[str, Any], description: str = "") -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "required": sorted(properties)}
    if description:
        schema["description"] = description
    return schema


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _json_response(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


_COUNT = {"type": "integer", "minimum": 0}
_TOTALS = {
    **{state: _COUNT for state in DEVICE_STATES},
    "total": _COUNT,
    "to_move": {**_COUNT, "description": "legacy + mapped"},
    "percent_migrated": _nullable("number", description="migrated / (legacy + mapped + migrated) x 100, one decimal"),
}
_DEVICE = {
    "id": {"type": "integer"},
    "identity": {"type": "string"},
    "group": _nullable("string"),
    "owner": _nullable("string"),
    "state": {"type": "string", "enum": list(DEVICE_STATES)},
    "first_seen_at": _time(),
    "last_scep_at": _time(),
    "last_est_at": _time(),
    "mapped_at": _time(),
    "mapping_mode": _nullable("string", enum=["certificate", "bootstrap", None]),
    "migrated_at": _time(),
    "certificate_not_after": _time(),
    "sunset_at": _time(),
    "client": _ref("ClientFingerprint"),
    "weak": {
        "type": "array",
        "items": {"type": "string", "enum": ["DES", "SHA-1", "MD5", "static challenge"]},
        "description": "the weak choices of the device's SCEP client",
    },
    "next_action": _nullable("string", description="the first of actions; null unless still to move"),
    "actions": {"type": "array", "items": {"type": "string"}, "description": "what to do, most pressing first"},
}
assert {*DEVICE_COLUMNS} - {"user_agent", "cipher", "digest", "challenge", "est_client"} <= set(_DEVICE)

SCHEMAS: dict[str, Any] = {
    "Totals": _object(_TOTALS, "devices per migration state"),
    "Group": _object(
        {
            "name": _nullable("string", description="null: the devices in no group"),
            **_TOTALS,
            "sunset_at": _time(),
            "allow_downgrade": {"type": "boolean"},
            "cut_off": {**_COUNT, "description": "devices still on SCEP that the sunset cuts off"},
        }
    ),
    "ClientFingerprint": _object(
        {
            "user_agent": _nullable("string"),
            "cipher": _nullable("string", examples=["des", "3des", "aes128"]),
            "digest": _nullable("string", examples=["md5", "sha1", "sha256"]),
            "challenge": _nullable("string", examples=["static", "one-time", "webhook", "renewal"]),
            "family": _nullable(
                "string",
                description="the SCEP client family recognised from its requests (null: not recognised)",
                examples=["apple", "windows", "cisco-ios", "certmonger", "sscep", "micromdm-scepclient", "jscep"],
            ),
            "name": {"type": "string", "description": "the family's name, 'unknown' when not recognised"},
            "est_client": {
                "type": "string",
                "enum": ["yes", "some versions", "no", "unknown"],
                "description": "whether that family has an EST client (docs/migration.md)",
            },
        },
        "what the device's SCEP client chose at its last SCEP contact, and which client it is",
    ),
    "Device": _object(_DEVICE),
    "TrendPoint": _object(
        {"day": {"type": "string", "format": "date"}, "legacy": _COUNT, "mapped": _COUNT, "migrated": _COUNT}
    ),
    "MigrationSummary": _object(
        {
            "generated_at": _time(),
            "group": _nullable("string"),
            "silent_days": {"type": "integer"},
            "totals": _ref("Totals"),
            "groups": {"type": "array", "items": _ref("Group")},
            "to_move_total": _COUNT,
            "to_move": {"type": "array", "items": _ref("Device"), "description": "empty here: see /admin/api/devices"},
            "silent_total": _COUNT,
            "silent": {"type": "array", "items": _ref("Device"), "description": "empty here: see /admin/api/devices"},
            "trend": {"type": "array", "items": _ref("TrendPoint")},
        }
    ),
    "DevicePage": _object(
        {
            "devices": {"type": "array", "items": _ref("Device")},
            "next_after": _nullable("integer", description="pass as `after` for the next page; null: last page"),
            "limit": {"type": "integer"},
        }
    ),
    "ChallengeRequest": {
        "type": "object",
        "required": ["device_id"],
        "additionalProperties": False,
        "properties": {
            "device_id": {"type": "string", "maxLength": 255, "description": "the identity (CSR CN) it is for"},
            "profile": {"type": "string", "description": "default: the default profile"},
            "ttl_seconds": {"type": "integer", "minimum": 60, "maximum": 2592000, "default": 3600},
            "uses": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 1},
            "expected_subject": {"type": "string", "description": "RFC 4514 subject the CSR must carry"},
        },
    },
    "Challenge": _object(
        {
            "challenge": {"type": "string"},
            "device_id": {"type": "string"},
            "profile": {"type": "string"},
            "expires_at": {"type": "string", "format": "date-time"},
            "uses": {"type": "integer"},
            "expected_subject": _nullable("string"),
        }
    ),
}

_ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}, {"adminClientCertificate": []}]
_REFUSALS = {
    "401": _error("no credential, or an unknown or disabled token (WWW-Authenticate: Bearer)"),
    "403": _error("a token without the admin scope, or a revoked or expired admin client certificate"),
    "503": _error("the database is unavailable"),
}
_GROUP = _query("group", "only this device group", {"type": "string", "minLength": 1, "maxLength": 64})

PATHS: dict[str, Any] = {
    "/admin/api/migration/summary": {
        "get": {
            "summary": "The migration report's numbers",
            "operationId": "migrationSummary",
            "security": _ADMIN,
            "parameters": [
                _GROUP,
                _query(
                    "days",
                    "days the trend covers, up to today",
                    {"type": "integer", "minimum": 1, "maximum": MAX_TREND_DAYS, "default": DEFAULT_TREND_DAYS},
                ),
            ],
            "responses": {
                "200": _json_response("the summary", _ref("MigrationSummary")),
                "400": _error("a bad query parameter"),
                "404": _error("no such group"),
                **_REFUSALS,
            },
        }
    },
    "/admin/api/devices": {
        "get": {
            "summary": "Devices in id order, one page at a time (keyset pagination)",
            "operationId": "listDevices",
            "security": _ADMIN,
            "parameters": [
                _query(
                    "state",
                    "one state or several, comma-separated (legacy,mapped: still to move); default every state",
                    {"type": "string", "examples": ["legacy", "legacy,mapped"]},
                ),
                _GROUP,
                _query(
                    "silent",
                    "only mapped devices silent on EST since a mapping older than migration.silent_days",
                    {"type": "boolean", "default": False},
                ),
                _query("after", "the next_after of the previous page", {"type": "integer", "minimum": 0, "default": 0}),
                _query("limit", "devices per page", {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}),
            ],
            "responses": {
                "200": _json_response("one page of devices", _ref("DevicePage")),
                "400": _error("a bad query parameter"),
                **_REFUSALS,
            },
        }
    },
    "/admin/api/scep/challenges": {
        "post": {
            "summary": "A new one-time SCEP challenge for an MDM",
            "operationId": "createScepChallenge",
            "security": [{"adminToken": []}],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": _ref("ChallengeRequest")}},
            },
            "responses": {
                "201": _json_response("the challenge (shown once)", _ref("Challenge")),
                "400": _error("a bad body or field"),
                "404": _error("no such profile"),
                **_REFUSALS,
            },
        }
    },
    "/admin/api/openapi.json": {
        "get": {
            "summary": "This document",
            "operationId": "openapi",
            "security": [],
            "responses": {"200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}},
        }
    },
    "/admin/migration": {
        "get": {
            "summary": "The dashboard page (loads its data from the API with the user's credential)",
            "operationId": "dashboard",
            "security": [],
            "responses": {"200": {"description": "HTML", "content": {"text/html": {}}}},
        }
    },
}


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document (a new dict each call)."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "SCEP-to-EST gateway admin API",
            "version": "1",
            "description": "Served on the HTTPS listener only. Errors are one line of text/plain.",
        },
        "servers": [{"url": "/"}],
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an admin token from `gateway admin-token add NAME`",
                },
                "adminClientCertificate": {
                    "type": "mutualTLS",
                    "description": "a TLS client certificate listed in admin.client_cert_fingerprints",
                },
            },
        },
    }
