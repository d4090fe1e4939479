"""The OpenAPI 3.1 document of the REST API, served at ``/v1/openapi.json`` and kept in
``docs/reference/openapi.json`` (a test checks the two are equal; regenerate the file with
``python -m maitred.transports.http.openapi > docs/reference/openapi.json``)."""

from __future__ import annotations

import json
from typing import Any

_ERROR = {"$ref": "#/components/responses/Error"}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): _ERROR for c in codes}


def _json_ok(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_document() -> dict[str, Any]:
    name_param = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "maitred REST API",
            "version": "1",
            "description": "Call services, read the management interface, publish and "
            "subscribe, on the same listener as the message switch. See docs/reference/http.md.",
        },
        "paths": {
            "/v1/services/{name}": {
                "post": {
                    "summary": "Call a service",
                    "parameters": [
                        name_param,
                        {
                            "name": "X-Maitred-Timeout",
                            "in": "header",
                            "description": "deadline in seconds (default: the service's policy)",
                            "schema": {"type": "number", "exclusiveMinimum": 0},
                        },
                        {
                            "name": "Accept",
                            "in": "header",
                            "description": "text/event-stream: SSE events partial... final "
                            "(or error); application/json: the reply frames as base64",
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "Prefer",
                            "in": "header",
                            "description": "respond-async: for a service with on_no_worker = "
                            "store, answer 202 once the request is stored (ignored otherwise)",
                            "schema": {"type": "string"},
                        },
                    ],
                    "requestBody": {
                        "description": "The request: one frame (any content type), or with "
                        "Content-Type application/json a Frames object (several frames).",
                        "content": {
                            "application/octet-stream": {"schema": {"type": "string"}},
                            "application/json": {"schema": {"$ref": "#/components/schemas/Frames"}},
                        },
                    },
                    "responses": {
                        "200": {
                            "description": "The final reply: its frames concatenated "
                            "(X-Maitred-Frames lists their lengths), or a Frames object with "
                            "Accept: application/json, or an SSE stream.",
                            "headers": {
                                "X-Maitred-Frames": {
                                    "description": "comma-separated frame lengths",
                                    "schema": {"type": "string"},
                                }
                            },
                            "content": {
                                "application/octet-stream": {"schema": {"type": "string"}},
                                "application/json": {
                                    "schema": {"$ref": "#/components/schemas/Frames"}
                                },
                                "text/event-stream": {"schema": {"type": "string"}},
                            },
                        },
                        "202": {
                            "description": "Prefer: respond-async to a store service: the "
                            "request is committed to the durable store and will be served "
                            "without this caller.",
                            "headers": {
                                "Preference-Applied": {
                                    "description": "respond-async",
                                    "schema": {"type": "string"},
                                }
                            },
                            "content": {
                                "application/json": {
                                    "schema": {
                                        "type": "object",
                                        "properties": {
                                            "service": {"type": "string"},
                                            "id": {"type": "integer"},
                                        },
                                        "required": ["service", "id"],
                                    }
                                }
                            },
                        },
                        **_errors(400, 403, 413, 429, 500, 502, 503, 504),
                    },
                },
                "get": {
                    "summary": "One service with its workers (mmi.services + mmi.workers)",
                    "parameters": [name_param],
                    "responses": {
                        "200": _json_ok("the service", {"$ref": "#/components/schemas/Service"}),
                        **_errors(404),
                    },
                },
            },
            "/v1/services": {
                "get": {
                    "summary": "List services (mmi.services)",
                    "description": "At most [broker] mmi_max_items services; a longer list, or"
                    " a request with offset or limit, is answered with one page"
                    " (docs/reference/mmi.md#listings-and-pages).",
                    "parameters": [
                        {"name": "offset", "in": "query", "schema": {"type": "integer"}},
                        {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                    ],
                    "responses": {
                        "200": _json_ok(
                            "services, or one page of them",
                            {
                                "oneOf": [
                                    {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Service"},
                                    },
                                    {
                                        "type": "object",
                                        "properties": {
                                            "items": {
                                                "type": "array",
                                                "items": {"$ref": "#/components/schemas/Service"},
                                            },
                                            "offset": {"type": "integer"},
                                            "total": {"type": "integer"},
                                            "next": {"type": ["integer", "null"]},
                                            "truncated": {"type": "boolean"},
                                        },
                                    },
                                ]
                            },
                        )
                    },
                }
            },
            "/v1/queues": {
                "get": {
                    "summary": "Queue depths (mmi.queues) and switch queues",
                    "responses": {"200": _json_ok("queues", {"type": "object"})},
                }
            },
            "/v1/dead-letters": {
                "get": {
                    "summary": "Stored switch messages given up after too many deliveries",
                    "parameters": [{"name": "queue", "in": "query", "schema": {"type": "string"}}],
                    "responses": {"200": _json_ok("dead letters", {"type": "array"})},
                }
            },
            "/v1/topics": {
                "get": {
                    "summary": "Subscribed patterns with their subscriber counts (mmi.topics)",
                    "responses": {"200": _json_ok("patterns", {"type": "object"})},
                }
            },
            "/v1/topics/{topic}": {
                "post": {
                    "summary": "Publish the body (one frame) on a topic",
                    "parameters": [
                        {
                            "name": "topic",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "requestBody": {
                        "content": {"application/octet-stream": {"schema": {"type": "string"}}}
                    },
                    "responses": {
                        "200": _json_ok(
                            "sessions reached",
                            {"type": "object", "properties": {"delivered": {"type": "integer"}}},
                        ),
                        **_errors(400, 403, 413),
                    },
                },
                "get": {
                    "summary": "Subscribe to a topic pattern (a.*, a.>, $sys.>) as SSE",
                    "description": "Each publication is an SSE event 'message' whose data is a "
                    "TopicEvent; an 'error' event ends a stream whose reader is too slow.",
                    "parameters": [
                        {
                            "name": "topic",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {
                        "200": {
                            "description": "an event stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        **_errors(400, 403),
                    },
                },
            },
            "/metrics": {
                "get": {
                    "summary": "Prometheus text format",
                    "responses": {
                        "200": {
                            "description": "metrics",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/healthz": {
                "get": {
                    "summary": "The process answers",
                    "responses": {"200": _json_ok("ok", {"type": "object"})},
                }
            },
            "/readyz": {
                "get": {
                    "summary": "Accepting requests (503 while draining)",
                    "responses": {
                        "200": _json_ok("ready", {"type": "object"}),
                        "503": _json_ok("draining", {"type": "object"}),
                    },
                }
            },
            "/v1/openapi.json": {
                "get": {
                    "summary": "This document",
                    "responses": {"200": _json_ok("OpenAPI", {"type": "object"})},
                }
            },
        },
        "components": {
            "schemas": {
                "Frames": {
                    "type": "object",
                    "required": ["frames"],
                    "properties": {
                        "frames": {
                            "type": "array",
                            "items": {"type": "string", "contentEncoding": "base64"},
                        }
                    },
                },
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "reason"],
                            "properties": {
                                "code": {
                                    "type": "string",
                                    "description": "bad_request, forbidden, not_found, "
                                    "too_large, queue_full, no_worker, timeout, ...",
                                },
                                "reason": {"type": "string"},
                            },
                        }
                    },
                },
                "Service": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "workers": {"type": "integer"},
                        "free": {"type": "integer"},
                        "queued": {"type": "integer"},
                        "inflight": {"type": "integer"},
                        "requests": {"type": "integer"},
                        "replies": {"type": "integer"},
                        "errors": {"type": "integer"},
                        "timeouts": {"type": "integer"},
                    },
                },
                "TopicEvent": {
                    "type": "object",
                    "properties": {
                        "topic": {"type": "string"},
                        "frames": {"type": "array", "items": {"type": "string"}},
                        "headers": {"type": "object"},
                        "text": {"type": "string", "description": "the frames as UTF-8, if so"},
                    },
                },
            },
            "responses": {
                "Error": {
                    "description": "an error (status from the error table in http.md)",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            },
        },
    }


if __name__ == "__main__":
    print(json.dumps(openapi_document(), indent=2))
