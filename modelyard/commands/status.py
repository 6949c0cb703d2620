from __future__ import annotations

import json
import sys
import time

import click


@click.command()
@click.option(
    "--url",
    default="http://127.0.0.1:8080",
    show_default=True,
    envvar="MODELYARD_URL",
    help="The server's REST address.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON status.")
def status(url: str, as_json: bool) -> None:
    """Show every model folder of a running server: state, serving version, last error.

    Exits 1 when a folder has failed, so a script or a probe can tell.
    """
    import requests
    from rich.console import Console
    from rich.table import Table

    try:
        r = requests.get(url.rstrip("/") + "/modelyard/status", timeout=10)
        r.raise_for_status()
    except requests.RequestException as e:
        raise click.ClickException(
            f"cannot read the status from {url}: {e}; is `modelyard serve` running there?"
        ) from None
    body = r.json()
    if as_json:
        click.echo(json.dumps(body, indent=2))
    else:
        table = Table(title=f"{body['directory']}  ready={body['ready']}")
        for column in ("folder", "model", "state", "serving", "since", "last error"):
            table.add_column(column, overflow="fold")
        colours = {"ready": "green", "loading": "yellow", "failed": "red", "unloaded": "blue"}
        for m in body["models"]:
            since = time.strftime("%H:%M:%S", time.localtime(m["updated_at"]))
            table.add_row(
                m["folder"].rsplit("/", 1)[-1],
                m["name"] or "-",
                f"[{colours[m['state']]}]{m['state']}[/]",
                m["serving_version"] if m["serving_version"] is not None else "-",
                since,
                m["error"] or "",
            )
        console = Console(width=160 if not sys.stdout.isatty() else None)
        console.print(table)
        for m in body["models"]:
            if reg := m.get("registry"):
                version = f"version {reg['version']}" if reg["version"] else reg["pinned"]
                console.print(
                    f"{m['name']}: {reg['uri']} is {version} (run {reg['run_id'] or '-'}, "
                    f"source {reg['source'] or '-'})"
                )
        for p in body.get("processes", []):
            state = "serving" if p["ready"] else "not serving"
            versions = ", ".join(f"{n} {v or '-'}" for n, v in p["versions"].items()) or "no models"
            console.print(f"process {p['index']} (pid {p['pid'] or '-'}): {state}; {versions}")
    if any(m["state"] == "failed" for m in body["models"]):
        sys.exit(1)
