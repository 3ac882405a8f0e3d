"""Headers on trigger outputs, error replies and dead letters."""

from __future__ import annotations

HEADER_TRIGGER = "Forge-Trigger"
HEADER_SOURCE_SUBJECT = "Forge-Source-Subject"
HEADER_SOURCE_STREAM = "Forge-Source-Stream"
HEADER_STREAM_SEQ = "Forge-Stream-Seq"
HEADER_PLUGIN = "Forge-Plugin"
HEADER_PLUGIN_VERSION = "Forge-Version"
HEADER_ERROR_CODE = "Forge-Error-Code"
HEADER_ERROR = "Forge-Error"
