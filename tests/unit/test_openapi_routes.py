"""services/apiserver/openapi.yaml lists exactly the routes the apiserver serves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import yaml
from aiohttp import web

from services.apiserver.server import make_app
from services.common.config import Config
from services.common.paths import resolve_paths

DOC = Path(__file__).resolve().parents[2] / "services" / "apiserver" / "openapi.yaml"
METHODS = {"get", "head", "post", "put", "delete", "patch", "options"}


def build_app(tmp_path: Path) -> web.Application:
    async def build() -> web.Application:
        # The app's gRPC channel wants a running loop: an earlier test's asyncio.run unset the
        # default one, so the app is made inside a loop of its own, as the apiserver does.
        return make_app(Config(paths=resolve_paths(tmp_path), runtime="skiff-lowlevel"))

    return asyncio.run(build())


def served(tmp_path: Path) -> set[tuple[str, str]]:
    app = build_app(tmp_path)
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        if path.startswith("/v{api_version"):
            continue  # the versioned twin of an unprefixed route, checked below
        routes.add((route.method.lower(), path))
    return routes


def documented() -> set[tuple[str, str]]:
    doc = yaml.safe_load(DOC.read_text())
    assert doc["openapi"].startswith("3.")
    return {(method, path) for path, item in doc["paths"].items() for method in item if method in METHODS}


def test_every_route_is_documented_and_every_documented_path_is_served(tmp_path: Path) -> None:
    routes = served(tmp_path)
    docs = documented()
    assert sorted(routes - docs) == [], "served but missing from openapi.yaml"
    assert sorted(docs - routes) == [], "in openapi.yaml but not served"


def test_each_route_has_its_versioned_twin(tmp_path: Path) -> None:
    app = build_app(tmp_path)
    canon = [(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None]
    plain = {(m, p) for m, p in canon if not p.startswith("/v{api_version")}
    versioned = {(m, p.split("}", 1)[1]) for m, p in canon if p.startswith("/v{api_version")}
    assert plain == versioned
