"""Loaded by schemathesis (SCHEMATHESIS_HOOKS): the bodies of tus and the draft are bytes."""

import schemathesis

schemathesis.serializer.alias(
    ["application/offset+octet-stream", "application/partial-upload"], "application/octet-stream"
)
