"""The viewer's web app: a page, the scene list, tiles and point queries; read-only (GET only).

Routes take a scene's name and look it up in the :class:`SceneIndex` built at start: an unknown name (and
so any ``..``, slash or absolute path) is a 404 before any file is touched. FastAPI's interactive docs are
off, since they load their scripts from a CDN; the page itself is served with a Content-Security-Policy
that lets it load only from this server.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from naic_seg.viewer.scenes import SceneIndex, UnknownScene
from naic_seg.viewer.tiles import CONFIDENCE_COLOURS, LAYERS, TileOutside, TileRenderer

STATIC = files("naic_seg.viewer") / "static"
MAX_ZOOM = 30
# The page may load scripts, styles, tiles and JSON from this server only.
CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)
TILE_HEADERS = {"Cache-Control": "private, max-age=3600"}  # tile URLs carry the map's version


def create_app(index: SceneIndex, renderer: TileRenderer | None = None) -> FastAPI:
    """The app serving ``index``'s scenes."""
    renderer = renderer or TileRenderer(index)
    app = FastAPI(title="naic-seg viewer", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=str(STATIC)), name="static")

    @app.exception_handler(UnknownScene)
    def _unknown(request: Request, err: UnknownScene) -> JSONResponse:
        return JSONResponse({"detail": "unknown scene: the scene list is at /api/scenes"}, status_code=404)

    @app.exception_handler(TileOutside)
    def _outside(request: Request, err: TileOutside) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=404)

    @app.get("/", response_class=HTMLResponse)
    def page() -> HTMLResponse:
        html = (STATIC / "index.html").read_text(encoding="utf-8")
        return HTMLResponse(
            html, headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"}
        )

    @app.get("/api/scenes")
    def scenes() -> dict:
        return {
            "classes": index.legend(),
            "confidence_colours": [[int(c) for c in CONFIDENCE_COLOURS[i, :3]] for i in range(0, 256, 51)],
            "scenes": [s.summary() for s in index],
            "problems": index.problems,
        }

    @app.get("/api/scenes/{name}")
    def scene(name: str) -> dict:
        return index.get(name).summary()

    @app.get("/api/scenes/{name}/point")
    def point(name: str, lon: float = Query(ge=-180, le=180), lat: float = Query(ge=-90, le=90)) -> dict:
        return renderer.point(name, lon, lat)

    @app.get("/tiles/{name}/{layer}/{z}/{x}/{y}.png")
    def tile(
        name: str,
        layer: str,
        z: int = PathParam(ge=0, le=MAX_ZOOM),
        x: int = PathParam(ge=0),
        y: int = PathParam(ge=0),
    ) -> Response:
        index.get(name)  # an unknown scene is a 404 whatever the rest of the URL says
        if layer not in LAYERS:
            raise HTTPException(404, f"no layer {layer!r}: the layers are {', '.join(LAYERS)}")
        if x >= 2**z or y >= 2**z:
            raise HTTPException(404, f"no tile {z}/{x}/{y}")
        return Response(renderer.tile(name, layer, z, x, y), media_type="image/png", headers=TILE_HEADERS)

    return app
