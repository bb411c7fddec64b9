"""Project commands: ``kedro view`` serves the scene maps in a web map viewer (the library: naic_seg.viewer).

Kedro adds the commands of this module's ``cli`` group to its own. ``run`` is Kedro's own command, named
here because ``python -m naic_seg`` (see ``__main__.py``) takes ``run`` from this module once it exists.
"""

from __future__ import annotations

from pathlib import Path

import click
from kedro.framework.cli.project import run
from kedro.framework.cli.utils import _split_params, env_option
from kedro.framework.project import settings

__all__ = ["cli", "run", "view", "view_sources"]

PARAMS_HELP = "Runtime parameters the catalog reads, as for kedro run: e.g. scenes_root=/data/scenes"


@click.group(name="naic-seg")
def cli() -> None:
    """naic-seg's project commands."""


def _filepath(entry: dict | None) -> str | None:
    """A catalog entry's file or folder, looking inside a wrapper such as MlflowArtifactDataset."""
    while isinstance(entry, dict):
        for key in ("filepath", "path"):
            if isinstance(entry.get(key), str):
                return entry[key]
        entry = entry.get("dataset")
    return None


def view_sources(project_path: Path, env: str | None, params: dict | None) -> dict:
    """The folders and files ``map_scenes`` used, from the project's catalog and parameters (relative paths
    are the project's): ``maps``, ``scenes``, ``areas``, ``scores``, the ``classes`` and the ``bands``."""
    loader = settings.CONFIG_LOADER_CLASS(
        conf_source=str(project_path / settings.CONF_SOURCE),
        env=env,
        runtime_params=params or {},
        **settings.CONFIG_LOADER_ARGS,
    )
    catalog, parameters = loader["catalog"], loader["parameters"]

    def where(name: str) -> Path | None:
        found = _filepath(catalog.get(name))
        return None if found is None else project_path / found

    return {
        "maps": where("scene_maps"),
        "scenes": where("scenes"),
        "areas": where("scene_areas"),
        "scores": where("scene_scores"),
        "classes": parameters.get("classes"),
        "bands": (parameters.get("map_scenes") or {}).get("bands"),
    }


def _path_option(name: str, help_text: str, folder: bool):
    kind = click.Path(file_okay=not folder, dir_okay=folder, path_type=Path)
    return click.option(name, type=kind, default=None, help=help_text)


@cli.command()
@_path_option("--maps", "Folder of scene maps (default: the catalog's scene_maps).", folder=True)
@_path_option("--scenes", "Folder of the scenes' imagery (default: the catalog's scenes).", folder=True)
@_path_option(
    "--areas", "Area table JSON (default: the catalog's scene_areas, unless --maps is given).", False
)
@_path_option(
    "--scores", "Scene scores JSON (default: the catalog's scene_scores, unless --maps is given).", False
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="0: any free port."
)
@env_option
@click.option("--params", type=click.UNPROCESSED, default="", help=PARAMS_HELP, callback=_split_params)
@click.pass_obj
def view(metadata, maps, scenes, areas, scores, host, port, env, params) -> None:
    """Serve the scene maps in a web map viewer: the maps over their imagery, legend with hectares,
    scores, click for a class. Read-only; prints the URL. The area table and scores of the project are
    shown only with its own maps: with --maps, areas are read back from the maps unless --areas is given."""
    from naic_seg.core.labels import ClassTable
    from naic_seg.viewer import SceneIndex, create_app, read_json
    from naic_seg.viewer.server import bind, is_loopback, serve, url_of

    sources = view_sources(Path(metadata.project_path), env, params)
    own_maps = maps is None
    maps = maps or sources["maps"]
    if maps is None:
        raise click.ClickException("the catalog has no scene_maps entry: name the maps folder with --maps")
    if not own_maps:
        sources["areas"] = sources["scores"] = None
    try:
        index = SceneIndex.build(
            maps,
            ClassTable.from_config(sources["classes"]),
            scenes=scenes or sources["scenes"],
            areas=read_json(areas or sources["areas"]),
            scores=read_json(scores or sources["scores"]),
            bands=sources["bands"],
        )
    except FileNotFoundError as err:
        raise click.ClickException(str(err)) from err
    try:
        sock = bind(host, port)
    except OSError as err:
        raise click.ClickException(
            f"cannot listen on {host}:{port} ({err}): choose --port (0: any free port)"
        ) from err
    if not is_loopback(host):
        click.secho(
            f"Serving on {host}: anyone who can reach it sees the maps (no authentication).", fg="yellow"
        )
    click.echo(f"{len(index)} scene map(s) from {maps}")
    click.echo(f"Viewer at {url_of(sock)} (Ctrl-C stops it)", nl=True)
    serve(create_app(index), sock)
    click.echo("Viewer stopped")
