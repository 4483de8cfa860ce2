"""Docker's JSON progress messages (pull, push, import) from highlevel's ImageProgress, and X-Registry-Auth."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from aiohttp import web

from services.common.errors import InvalidArgument
from services.gen.skiff import highlevel

hl = highlevel.v1
BAR_WIDTH = 50
# Statuses whose text is carried whole in `detail` (Docker prints them as one line, no bar).
WHOLE_LINE = {"Resolving"}
PREFIXED = {"Digest": "Digest: ", "Status": "Status: "}


def human_size(n: float) -> str:
    """Docker's units.HumanSize: decimal units, three significant digits."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.4g}{unit}"
        n /= 1000
    return f"{n}B"


def progress_bar(current: int, total: int) -> str:
    """The text the CLI shows beside the bar, e.g. ``[=====>        ]  1.2MB/3.4MB``."""
    if total <= 0:
        return human_size(current)
    done = min(BAR_WIDTH, BAR_WIDTH * current // total)
    arrow = ">" if done < BAR_WIDTH else ""
    bar = "=" * max(0, done - (1 if arrow else 0)) + arrow
    return f"[{bar:<{BAR_WIDTH}}] {human_size(current):>8}/{human_size(total)}"


def pull_message(p: hl.ImageProgress) -> dict[str, Any]:
    if p.status in WHOLE_LINE:
        return {"status": p.detail or p.status, "id": p.id} if p.id else {"status": p.detail or p.status}
    if p.status in PREFIXED:
        return {"status": PREFIXED[p.status] + p.detail}
    status = f"{p.status} {p.detail}" if p.detail else p.status
    msg: dict[str, Any] = {"status": status, "progressDetail": {}}
    if p.current or p.total:
        msg["progressDetail"] = {"current": p.current, "total": p.total}
        msg["progress"] = progress_bar(p.current, p.total)
    if p.id:
        msg["id"] = p.id
    return msg


def push_message(p: hl.ImageProgress, tag: str) -> list[dict[str, Any]]:
    if p.status == "Digest":
        # Docker's last lines of a push: the summary and the aux record the CLI reads the digest from.
        return [{"status": f"{tag}: digest: {p.detail} size: {p.total}"},
                {"progressDetail": {}, "aux": {"Tag": tag, "Digest": p.detail, "Size": p.total}}]
    return [pull_message(p)]


def error_message(message: str) -> dict[str, Any]:
    return {"errorDetail": {"message": message}, "error": message}


def line(msg: dict[str, Any]) -> bytes:
    return json.dumps(msg).encode() + b"\r\n"


def registry_auth(request: web.Request) -> hl.RegistryAuth | None:
    """X-Registry-Auth: base64url JSON {username, password, serveraddress, identitytoken}."""
    raw = request.headers.get("X-Registry-Auth", "").strip()
    if not raw:
        return None
    try:
        doc = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument(f"invalid X-Registry-Auth header: {exc}") from exc
    if not isinstance(doc, dict):
        return None
    server = str(doc.get("serveraddress") or "")
    # The CLI may send a URL ("https://host:port/v2/"); highlevel wants host[:port].
    server = server.split("://", 1)[-1].split("/", 1)[0]
    return hl.RegistryAuth(username=str(doc.get("username") or ""), password=str(doc.get("password") or ""),
                           identity_token=str(doc.get("identitytoken") or ""), server_address=server)
