"""Rendering of the browser pages: Jinja2 templates, escaped by default, no JavaScript.

Every page forbids being framed (`frame-ancestors 'none'`, `X-Frame-Options: DENY`, so no other
site can overlay a consent button), loads nothing from elsewhere, sends no referrer off the
gateway (the URL holds the authorization request; our own forms still name their origin) and is
never cached.
"""

from __future__ import annotations

from typing import Any, Final

import jinja2
from starlette.responses import HTMLResponse

_ENV: Final = jinja2.Environment(
    loader=jinja2.PackageLoader("proxy.web", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)
SECURITY_HEADERS: Final = {
    "content-security-policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    # Not "no-referrer": a form posted from a page under that policy carries `Origin: null`, which
    # the origin check refuses. Same-origin requests name us; nothing else learns the URL.
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}


def page(
    template: str, status: int = 200, headers: dict[str, str] | None = None, **context: Any
) -> HTMLResponse:
    """A rendered page with the security headers every page carries."""
    html = _ENV.get_template(template).render(**context)
    return HTMLResponse(html, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})
