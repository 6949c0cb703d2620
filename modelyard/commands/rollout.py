"""`modelyard rollout status|promote|abort NAME`: a running server's rollouts
(modelyard.serving.rollouts), through its REST port."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from modelyard.serving.auth import ADMIN_TOKEN_ENV

ROLLOUTS_PATH = "/modelyard/rollouts"

url_option = click.option(
    "--url",
    default="http://127.0.0.1:8080",
    show_default=True,
    envvar="MODELYARD_URL",
    help="The server's REST address.",
)


@click.group()
def rollout() -> None:
    """A model's candidate version beside its serving one: compare, promote, abort."""


def _call(method: str, url: str, path: str, token: str | None = None) -> dict[str, Any]:
    import requests

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = requests.request(method, url.rstrip("/") + path, headers=headers, timeout=330)
    except requests.RequestException as e:
        raise click.ClickException(
            f"cannot reach {url}: {e}; is `modelyard serve` running there?"
        ) from None
    try:
        body: dict[str, Any] = r.json()
    except ValueError:
        body = {"error": r.text}
    if r.status_code >= 400:
        raise click.ClickException(f"{r.status_code}: {body.get('error') or body}")
    return body


@rollout.command()
@click.argument("name", required=False)
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def status(name: str | None, url: str, as_json: bool) -> None:
    """The comparison of NAME's candidate with its incumbent (every rollout without NAME)."""
    body = _call("GET", url, ROLLOUTS_PATH)
    found = [r for r in body["rollouts"] if name is None or r["model"] == name]
    if name is not None and not found:
        raise click.ClickException(
            f"model '{name}' has no rollout at {url}; `modelyard rollout status` lists them"
        )
    if as_json:
        click.echo(json.dumps(found[0] if name is not None else found, indent=2))
        return
    if not found:
        click.echo("no rollouts")
    for r in found:
        click.echo(_describe(r))


def _ms(value: float | None) -> str:
    return f"{value:.2f} ms" if value is not None else "-"


def _describe(r: dict[str, Any]) -> str:
    share = f"weight {r['weight']}%" if r["mode"] == "canary" else f"sample {r['sample']}"
    agreement = f"{r['agreement']:.4f}" if r["agreement"] is not None else "-"
    lines = [
        f"{r['model']}: {r['mode']} ({share}), incumbent {r['incumbent']} -> "
        f"candidate {r['candidate']}  [{r['processes']} process(es)]",
        f"  compared {r['compared']}, agreement {agreement}, shadow calls dropped {r['dropped']}",
    ]
    for side in ("incumbent", "candidate"):
        s = r["sides"][side]
        lines.append(
            f"  {side:9} answered {s['answered']}, errors {s['errors']} "
            f"({s['error_rate']:.2%}), p50 {_ms(s['p50_ms'])}, p99 {_ms(s['p99_ms'])}"
            + (
                f"; on {s['labelled']} labelled: accuracy {s['accuracy']:.4f}, "
                f"precision {s['precision']:.4f}, recall {s['recall']:.4f}"
                if s.get("labelled")
                else ""
            )
        )
    for output, d in r["outputs"].items():
        lines.append(f"  output {output}: mean |diff| {d['mean_abs']:.6g}, max {d['max_abs']:.6g}")
    return "\n".join(lines)


def _acting(verb: str, doc: str) -> Callable[..., None]:
    @click.argument("name")
    @url_option
    @click.option(
        "--admin-token-file",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        help=f"File of the server's admin token (else {ADMIN_TOKEN_ENV}).",
    )
    def command(name: str, url: str, admin_token_file: Path | None) -> None:
        import os

        token = (
            admin_token_file.read_text().strip()
            if admin_token_file is not None
            else os.environ.get(ADMIN_TOKEN_ENV)
        )
        body = _call("POST", url, f"{ROLLOUTS_PATH}/{name}/{verb}", token)
        done = "promoted" if verb == "promote" else "aborted"
        click.echo(f"model '{name}': {done}; version {body.get('serving') or '-'} serves")
        sys.stdout.flush()

    command.__doc__ = doc
    return command


rollout.command("promote")(
    _acting("promote", "Serve NAME's candidate instead of its incumbent, on every process.")
)
rollout.command("abort")(
    _acting("abort", "Unload NAME's candidate; its incumbent serves on, on every process.")
)
