"""Tile links through a real nginx (Debian's, `make test` installs it) with the project's
deploy/nginx-tiles.conf in front of the live app: nginx accepts exactly the links the app signs,
refuses forged and withdrawn ones in the app's words, sends kept tiles from disk without asking
the app, and hands a tile not made yet to the app, which answers with X-Accel-Redirect."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from annotator import tile_links, tile_store
from annotator.models import Membership

from .conftest import client_for

ROOT = Path(__file__).resolve().parents[1]
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _config(folder: Path, port: int, upstream: str, tile_dir: Path, secret: str) -> str:
    # Run as root (a CI container), nginx would drop its workers to `nobody`, who cannot enter
    # the test's private temporary folders; as any other user it keeps its own.
    user = "user root root;" if os.geteuid() == 0 else ""
    temp = {name: folder / name for name in ("client", "proxy", "fastcgi", "uwsgi", "scgi")}
    return f"""
{user}
worker_processes 1;
daemon off;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    access_log off;
    client_body_temp_path {temp["client"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};
    upstream cytomark_web {{ server {upstream}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{port};
        set $tile_dir {tile_dir};
        set $tile_secret "{secret}";
        include {ROOT / "deploy" / "nginx-tiles.conf"};
    }}
}}
"""


@pytest.fixture
def nginx(live_server, settings, tmp_path):
    """nginx on a free loopback port in front of the live server; yields its base URL."""
    if not Path(NGINX).exists():
        pytest.fail("nginx is not installed: `make test` installs Debian's nginx-core")
    settings.TILE_ACCEL_REDIRECT = "/_tile_files/"
    folder = tmp_path / "nginx"
    folder.mkdir()
    port = _free_port()
    upstream = urlsplit(live_server.url).netloc
    conf = folder / "nginx.conf"
    conf.write_text(
        _config(folder, port, upstream, Path(settings.TILE_DIR), settings.TILE_TOKEN_SECRET)
    )
    server = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(folder)])
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                assert server.poll() is None, (folder / "error.log").read_text()
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def get(url: str) -> tuple[int, str, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.headers["Content-Type"], response.read(), response
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read(), error


def test_nginx_accepts_the_apps_links_and_sends_what_the_app_made(nginx, scan, annotator):
    link = tile_links.issue(annotator, scan)
    status, kind, data, response = get(nginx + link.tiles_url + "12/0_0.jpeg")
    assert (status, kind) == (200, "image/jpeg"), data
    session = client_for(annotator).get(f"/api/v1/scans/{scan.pk}/tiles/scan_files/12/0_0.jpeg")
    assert data == session.content
    assert "immutable" in response.headers["Cache-Control"]
    key = tile_links.scan_key(scan)
    assert tile_store.tile_path(key, 12, 0, 0).read_bytes() == data


def test_nginx_sends_a_kept_tile_from_disk_without_the_app(nginx, scan, annotator):
    link = tile_links.issue(annotator, scan)
    key = tile_links.scan_key(scan)
    tile_store.store(key, 12, 1, 0, b"kept tile bytes")
    status, kind, data, _ = get(nginx + link.tiles_url + "12/1_0.jpeg")
    assert (status, kind, data) == (200, "image/jpeg", b"kept tile bytes")


def test_nginx_refuses_forged_expired_and_withdrawn_links_in_the_apps_words(nginx, scan, annotator):
    link = tile_links.issue(annotator, scan)
    tile_store.store(tile_links.scan_key(scan), 12, 0, 0, b"kept")
    fields = link.tiles_url.strip("/").split("/")
    forged = fields.copy()
    forged[4] = ("A" if fields[4][0] != "A" else "B") + fields[4][1:]
    cases = {
        "/" + "/".join(forged) + "/": tile_links.INVALID,
        tile_links.issue(annotator, scan, now=time.time() - 7200).tiles_url: tile_links.EXPIRED,
    }
    for base, message in cases.items():
        status, kind, data, _ = get(nginx + base + "12/0_0.jpeg")
        assert (status, kind) == (403, "application/json"), base
        assert message.encode() in data
    Membership.objects.filter(user=annotator).delete()
    status, kind, data, _ = get(nginx + link.tiles_url + "12/0_0.jpeg")
    assert (status, kind) == (403, "application/json")
    assert tile_links.WITHDRAWN.encode() in data
