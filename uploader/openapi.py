"""The OpenAPI document as a contract: what FastAPI derives from the routes, completed with
what it cannot see.

The tus and draft routes read their headers and bodies themselves (the fast path calls
them with fixed parameters), so their headers are declared here as parameters with their
real constraints, their bodies as request bodies, and their answers with the headers a
client relies on. Every operation may answer a problem document (``4XX``, ``503``) and
every answer carries ``X-Request-ID``. Links chain a creation to what can be done with
the upload it made, so that a client (or a stateful test) reaches real uploads.
``tests/openapi.json`` holds the document; a test fails when the served one differs.
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from uploader.observability.request_ids import MAX_LENGTH as REQUEST_ID_MAX_LENGTH
from uploader.protocols.tus_headers import CHECKSUM_ALGORITHMS

PROBLEM_MEDIA_TYPE = "application/problem+json"
_UPLOAD_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
_INTEGER = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}

PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details, with a stable ``code`` from the README's table.",
    "required": ["type", "title", "status", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": ["string", "null"]},
        "code": {"type": "string", "examples": ["upload.offset_mismatch"]},
        "instance": {"type": "string"},
        "request_id": {"type": ["string", "null"]},
    },
    "additionalProperties": True,
}


def _header(description: str, schema: dict[str, Any], required: bool = False) -> dict[str, Any]:
    return {"description": description, "required": required, "schema": schema}


REQUEST_ID_PATTERN = f"^[A-Za-z0-9._:;=+/@-]{{1,{REQUEST_ID_MAX_LENGTH}}}$"
_REQUEST_ID_HEADER = _header(
    "The request's id: the client's own X-Request-ID when it is sane, else one made here.",
    {"type": "string", "pattern": REQUEST_ID_PATTERN},
    required=True,
)
_RETRY_AFTER = _header("Seconds to wait before trying again.", {"type": "string", "pattern": "^[0-9]+$"})


def _problem_response(description: str, **headers: dict[str, Any]) -> dict[str, Any]:
    return {
        "description": description,
        "headers": headers,
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


_CLIENT_ERROR = _problem_response(
    "The request was refused; ``code`` says why (e.g. ``upload.not_found``, ``tus.header_invalid``).",
    **{"Retry-After": _RETRY_AFTER},
)
_UNAVAILABLE = _problem_response(
    "A dependency (database, storage, Redis, a hook) is unavailable, or the server is full: try again.",
    **{"Retry-After": _RETRY_AFTER},
)
_STORAGE_FULL = _problem_response("Storage is full (``storage.full``).", **{"Retry-After": _RETRY_AFTER})


def _parameter(name: str, description: str, schema: dict[str, Any], example: Any = None) -> dict[str, Any]:
    parameter = {
        "name": name,
        "in": "header",
        "required": False,
        "description": description,
        "schema": schema,
    }
    if example is not None:
        parameter["example"] = example
    return parameter


TUS_RESUMABLE = _parameter(
    "Tus-Resumable",
    "The tus version, on every tus request (not on the draft's, which send Upload-Draft-Interop-Version).",
    {"type": "string", "enum": ["1.0.0"]},
    example="1.0.0",
)
DRAFT_VERSION = _parameter(
    "Upload-Draft-Interop-Version",
    "Marks a request of the IETF resumable-upload draft, and its interop version.",
    {"type": "string", "enum": ["6", "8"]},
)
UPLOAD_COMPLETE = _parameter(
    "Upload-Complete",
    "(draft) Whether this request carries the upload's last byte.",
    {"type": "string", "enum": ["?0", "?1"]},
)
UPLOAD_LENGTH = _parameter("Upload-Length", "The upload's length in bytes.", _INTEGER, example=11)
UPLOAD_OFFSET = _parameter(
    "Upload-Offset", "Where this request's bytes begin (must be the upload's offset).", _INTEGER, example=0
)
_METADATA_PAIR = r"[^\s,]+( [A-Za-z0-9+/]*={0,2})?"
UPLOAD_METADATA = _parameter(
    "Upload-Metadata",
    "Comma-separated pairs of a key and its base64 value: ``filename bXkuanBn,filetype aW1hZ2UvanBlZw==``.",
    {"type": "string", "pattern": f"^{_METADATA_PAIR}( *, *{_METADATA_PAIR})*$"},
    example="filename aGVsbG8udHh0,filetype dGV4dC9wbGFpbg==",
)
UPLOAD_DEFER_LENGTH = _parameter(
    "Upload-Defer-Length",
    "The length is not known yet (then declared by a later PATCH).",
    {"type": "string", "enum": ["1"]},
)
UPLOAD_CONCAT = _parameter(
    "Upload-Concat",
    "``partial`` for a part of a parallel upload; ``final;<part URLs>`` to join parts.",
    {"type": "string", "pattern": "^(partial|final;.+)$"},
)
UPLOAD_CHECKSUM = _parameter(
    "Upload-Checksum",
    "The algorithm and base64 digest of this request's bytes (a mismatch is 460).",
    {"type": "string", "pattern": f"^({'|'.join(CHECKSUM_ALGORITHMS)}) [A-Za-z0-9+/]+={{0,2}}$"},
)
REPR_DIGEST = _parameter(
    "Repr-Digest",
    "The whole file's SHA-256 (RFC 9530), with Upload-Length: a file its owner already holds "
    "is complete at once (deduplicated); the bytes sent otherwise must match it.",
    {"type": "string", "pattern": "^sha-256=:[A-Za-z0-9+/]{43}=:$"},
)
X_REQUEST_ID = {
    "name": "X-Request-ID",
    "in": "header",
    "required": False,
    "description": "Your id for this request (kept when sane, else replaced): returned, logged, passed on.",
    "schema": {"type": "string", "pattern": REQUEST_ID_PATTERN},
}
_BINARY = {"schema": {"type": "string", "format": "binary"}}
_STATUS = {"$ref": "#/components/schemas/UploadStatus"}


def _headers(**described: str) -> dict[str, Any]:
    return {name.replace("_", "-"): _header(text, {"type": "string"}) for name, text in described.items()}


def _links(source: str) -> dict[str, Any]:
    """What a client can do next with the upload ``source`` names (a runtime expression)."""
    upload = {"upload_id": source}
    targets = {
        "UploadOffset": ("head_upload", "Its offset, to resume (HEAD)."),
        "AppendToUpload": ("append_to_upload", "Send (more of) its bytes (PATCH)."),
        "TerminateUpload": ("terminate_upload", "Delete it (DELETE)."),
        "UploadStatus": ("upload_status", "Its status as JSON."),
        "UploadContent": ("download_content", "Its bytes, once complete."),
        "UploadEvents": ("upload_events", "Its progress as Server-Sent Events."),
    }
    return {
        name: {"operationId": operation, "parameters": upload, "description": description}
        for name, (operation, description) in targets.items()
    }


def _tus_operations(tus_path: str) -> dict[tuple[str, str], dict[str, Any]]:
    """What the tus (and draft) operations need beyond what FastAPI sees."""
    collection, resource = tus_path, tus_path + "{upload_id}"
    upload_id = {"name": "upload_id", "in": "path", "required": True, "schema": _UPLOAD_ID}
    # (No braces in the pattern: a link expression takes them for an embedded expression.)
    from_location = f"$response.header.Location#regex:{tus_path}([0-9a-f]+)$"
    offset_headers = _headers(
        Tus_Resumable="1.0.0 (tus requests)",
        Upload_Offset="The upload's offset: every byte before it is stored.",
        Upload_Expires="When an unfinished upload expires (RFC 9110 date).",
    )
    discovery: dict[str, Any] = {
        "parameters": [],
        "responses": {
            "204": {
                "description": "The server's tus capabilities.",
                "headers": _headers(
                    Tus_Resumable="1.0.0",
                    Tus_Version="Versions supported: 1.0.0",
                    Tus_Extension="creation, creation-with-upload, creation-defer-length, termination, "
                    "expiration, checksum, concatenation, concatenation-unfinished",
                    Tus_Max_Size="The largest upload accepted, in bytes",
                    Tus_Checksum_Algorithm="Checksum algorithms accepted",
                ),
            }
        },
    }
    return {
        (collection, "options"): discovery,
        (resource, "options"): {**discovery, "parameters": [upload_id]},
        (collection, "post"): {
            "operationId": "create_upload",
            "parameters": [
                TUS_RESUMABLE,
                UPLOAD_LENGTH,
                UPLOAD_DEFER_LENGTH,
                UPLOAD_METADATA,
                UPLOAD_CONCAT,
                UPLOAD_CHECKSUM,
                REPR_DIGEST,
                DRAFT_VERSION,
                UPLOAD_COMPLETE,
            ],
            "requestBody": {
                "required": False,
                "description": "Optionally the first bytes (tus creation-with-upload), or the whole file "
                "(draft, any media type).",
                "content": {"application/offset+octet-stream": _BINARY, "application/octet-stream": _BINARY},
            },
            "responses": {
                "201": {
                    # No content declared: a tus creation has no body; only a draft upload
                    # whose last byte arrived with it answers its status document.
                    "description": "Created. (A draft upload whose last byte arrived also answers its "
                    "status document, as ``GET /api/v1/uploads/{upload_id}`` does.)",
                    "headers": {
                        "Location": _header("The upload's URL.", {"type": "string"}, required=True),
                        **offset_headers,
                    },
                    "links": _links(from_location),
                },
            },
        },
        (resource, "head"): {
            "operationId": "head_upload",
            "parameters": [upload_id, TUS_RESUMABLE, DRAFT_VERSION],
            "responses": {
                "200": {
                    "description": "(tus) The upload's offset and length.",
                    "headers": {
                        **offset_headers,
                        **_headers(
                            Upload_Length="The upload's length, when known.",
                            Upload_Metadata="The metadata it was created with.",
                            Upload_Defer_Length="1 while the length is not known.",
                            Upload_Concat="partial, or final with its parts.",
                        ),
                    },
                },
                "204": {
                    "description": "(draft) The upload's offset and whether it is complete.",
                    "headers": _headers(Upload_Offset="The upload's offset.", Upload_Complete="?1 or ?0"),
                },
            },
        },
        (resource, "patch"): {
            "operationId": "append_to_upload",
            "parameters": [
                upload_id,
                TUS_RESUMABLE,
                UPLOAD_OFFSET,
                UPLOAD_LENGTH,
                UPLOAD_CHECKSUM,
                DRAFT_VERSION,
                UPLOAD_COMPLETE,
            ],
            "requestBody": {
                "required": False,
                "description": "Bytes from Upload-Offset on: ``application/offset+octet-stream`` (tus) or "
                "``application/partial-upload`` (draft).",
                "content": {
                    "application/offset+octet-stream": _BINARY,
                    "application/partial-upload": _BINARY,
                },
            },
            "responses": {
                "204": {"description": "Stored; Upload-Offset is the new offset.", "headers": offset_headers},
                "200": {
                    "description": "(draft) The last byte arrived: the upload's status.",
                    "content": {"application/json": {"schema": _STATUS}},
                },
            },
        },
        (resource, "delete"): {
            "operationId": "terminate_upload",
            "parameters": [upload_id, TUS_RESUMABLE, DRAFT_VERSION],
            "responses": {"204": {"description": "Terminated: the upload and its bytes are gone."}},
        },
        (resource, "get"): {
            "operationId": "download_upload",
            "parameters": [upload_id],
            "responses": _download_responses("The uploaded bytes."),
        },
    }


def _download_responses(description: str) -> dict[str, Any]:
    any_bytes = {"*/*": _BINARY}
    return {
        "200": {"description": description, "content": any_bytes},
        "206": {"description": "The range asked for.", "content": any_bytes},
        "304": {"description": "Not modified (If-None-Match)."},
        "307": {"description": "Redirected to a presigned URL (UPLOADER_S3_PRESIGNED_DOWNLOADS)."},
    }


_SSE = {
    "text/event-stream": {
        "schema": {
            "type": "object",
            "description": "One event: its type, its id (for Last-Event-ID) and the upload's status.",
            "properties": {
                "event": {"type": "string", "examples": ["upload.progress"]},
                "id": {"type": "string"},
                "data": {"type": "string", "contentMediaType": "application/json"},
                "retry": {"type": "integer"},
            },
        }
    }
}


def _other_operations() -> dict[tuple[str, str], dict[str, Any]]:
    from_form = "$response.body#/uploads/0/id"
    return {
        ("/api/v1/uploads", "post"): {
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "description": "Any number of files; other fields become metadata of each.",
                            "properties": {"file": {"type": "string", "format": "binary"}},
                            "additionalProperties": True,
                        }
                    }
                },
            },
            "responses": {
                "201": {
                    "description": "The uploads made, one per file.",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["uploads"],
                                "properties": {"uploads": {"type": "array", "items": _STATUS}},
                            }
                        }
                    },
                    "links": _links(from_form),
                }
            },
        },
        ("/api/v1/uploads/{upload_id}/content", "get"): {
            "responses": _download_responses("The uploaded bytes.")
        },
        ("/api/v1/uploads/{upload_id}/variants/{name}", "get"): {
            "responses": _download_responses("The variant's bytes (an image).")
        },
        ("/api/v1/uploads/{upload_id}/events", "get"): {
            "responses": {
                "200": {"description": "The upload's events, until it is ready or failed.", "content": _SSE}
            }
        },
        ("/api/v1/events", "get"): {
            "responses": {"200": {"description": "Every event of the caller's uploads.", "content": _SSE}}
        },
    }


def _merge(operation: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if key == "parameters":
            known = {(p["name"].lower(), p["in"]) for p in value}
            kept = [p for p in operation.get("parameters", []) if (p["name"].lower(), p["in"]) not in known]
            operation["parameters"] = [*kept, *copy.deepcopy(value)]
        elif key == "responses":
            for status, response in value.items():
                operation["responses"][status] = copy.deepcopy(response)
        else:
            operation[key] = copy.deepcopy(value)


WRITES = {"post", "patch"}


def build_document(app: FastAPI, tus_path: str) -> dict[str, Any]:
    document = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["Problem"] = PROBLEM
    for unused in ("HTTPValidationError", "ValidationError"):  # validation errors are problems (400)
        schemas.pop(unused, None)
    extras = {**_tus_operations(tus_path), **_other_operations()}
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            if (path, method) in extras:
                _merge(operation, extras[(path, method)])
            responses = operation["responses"]
            responses.pop("422", None)
            responses.setdefault("4XX", copy.deepcopy(_CLIENT_ERROR))
            responses.setdefault("503", copy.deepcopy(_UNAVAILABLE))
            if method in WRITES:
                responses.setdefault("507", copy.deepcopy(_STORAGE_FULL))
            for response in responses.values():
                response.setdefault("headers", {})["X-Request-ID"] = copy.deepcopy(_REQUEST_ID_HEADER)
                if method == "head":  # an answer to HEAD has no body
                    response.pop("content", None)
            names = {(p["name"].lower(), p["in"]) for p in operation.get("parameters", [])}
            if ("x-request-id", "header") not in names:
                operation.setdefault("parameters", []).append(copy.deepcopy(X_REQUEST_ID))
    return document


def install(app: FastAPI, tus_path: str) -> None:
    """Serve ``build_document`` as the app's OpenAPI document (built once, on first use)."""
    built: dict[str, Any] = {}

    def openapi() -> dict[str, Any]:
        if not built:
            built.update(build_document(app, tus_path))
        return built

    app.openapi = openapi  # type: ignore[method-assign]
