"""Benchmark: Deep Zoom tiles over real HTTP, nginx in front of gunicorn, against nginx serving
the same bytes as static files and against a plain OpenSlide loop.

The production stack on loopback, as deploy/ describes it: gunicorn with deploy/gunicorn.conf.py
(2 workers x 4 threads, `config.settings.production` over plain HTTP) on a temporary PostgreSQL
database and a Redis database of the bench's own, behind Debian's nginx with a configuration
written by this script into a temporary folder: deploy/nginx-tiles.conf included in the server
block (`$tile_dir`, `$tile_secret`), the app's other locations proxied as deploy/nginx.conf does
(`keepalive_requests` raised so that the load generator's connections stay open), and a plain
`location /static-tiles/`. The app gets the same settings: TILE_DIR, TILE_TOKEN_SECRET and
TILE_ACCEL_REDIRECT=/_tile_files/.

An annotator of the study logs in (POST /login/ as the login form does) and opens a synthetic
JPEG TIFF scan: GET /api/v1/scans/ID/tiles/scan.dzi. Its tile size, overlap, format and size
come from that descriptor; the tiles' base URL is the `Url` attribute of its `<Image>` (a signed
link) or, where there is none, the session-checked `.../scan_files/` beside the descriptor
(then every tile request carries the session cookie). A fixed random sample of `--tiles` tiles
of the `--levels` highest Deep Zoom levels is then measured, in one run, over `--connections`
keep-alive connections:

    cold         the app's tile cache fresh (an empty TILE_DIR, nothing in Redis), each tile once,
                 through nginx; a Python client (one thread and connection each), which keeps
                 every answer for the checks below;
    warm         the same list again and round for `--duration` s with wrk (bench/tiles_http.lua):
                 made tiles are files that nginx sends itself;
    a) static    nginx sending the very bytes of the cold pass as static files, the same way
                 (warm and static take turns, `--rounds` each; the best round of each counts,
                 as for the cold pass and the plain loop);
    b) plain     `openslide.deepzoom.DeepZoomGenerator(slide, 254, 1)` and Pillow's JPEG encoder
                 (quality 80) in one process, no HTTP (bench/tiles.py's plain loop), for each
                 tile of the list the 254 px tile of the same level that holds its centre.

Rates are answers per second, latencies wrk's (warm, static) or the client's (cold) per
request. wrk checks every answer's status in Lua (which costs it some rate, alike on the warm and
static passes). The cold pass's client is then run on the static files as well: its own ceiling,
with the CPU it used, to show when a cold figure is the client's limit rather than the server's.
Goals: warm >= 25 % of the static rate; cold >= 3x the plain loop's rate. A pass with an answer
other than 200, or a failed connection, reports its errors instead of a rate.

Colour: `--check` tiles of the cold pass are decoded and compared with OpenSlide's read_region
of the same area (at the slide level DeepZoomGenerator would read, resized as it resizes): the
mean absolute difference over the tile's pixels and channels (0-255) must stay within
JPEG_TOLERANCE. The plain loop's tiles (what the viewer showed before) get the same measure
beside them, and the same tiles fetched again after the warm pass must be byte-identical.

Memory: the peak RSS (VmHWM) of the gunicorn workers, sampled through the run (workers recycled
by `max_requests` included).

    .venv/bin/python bench/tiles_http.py [--size 20000] [--tiles 2000] [--levels 4]
        [--connections 8] [--duration 10] [--check 200] [--redis-db 12]

Needs nginx (with secure_link, Debian's nginx-core) and wrk: `make bench-tools` installs them.
The database (cytomark_bench_tiles_http), the folder and the Redis database's keys are removed
afterwards; the Redis database must be empty at the start.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import grp
import http.client
import io
import math
import os
import pwd
import random
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ElementTree
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from urllib.parse import urlencode, urljoin, urlsplit

import benchenv
import web_process
from tiles import plain_loop

ROOT = benchenv.ROOT
HOST = "127.0.0.1"
DB_NAME = "cytomark_bench_tiles_http"
SEED = 2019
WARM_GOAL = 0.25  # warm tiles at least this fraction of nginx's static rate
COLD_GOAL = 3.0  # cold tiles at least this many times the plain loop's rate
# Mean absolute difference (0-255, over a tile's pixels and channels) from OpenSlide's
# read_region that a tile may have. Encoding read_region at quality 80 (the viewer's tiles so
# far) costs these scans 1.6-1.8 at the finest Deep Zoom level and up to 5.2 three levels
# coarser (more detail per pixel); a colour or tiling error costs tens. (A shift by one pixel
# costs only 1.4-2 at the finest level: this check does not see that.)
JPEG_TOLERANCE = 8.0
PLAIN_TILE_SIZE, PLAIN_OVERLAP = 254, 1
STATIC = "a) nginx, same bytes, static"
# The cold pass's client on nginx's static files: how fast it can go at all.
CEILING = "(the cold pass's client, on static)"
START_TIMEOUT_SECONDS = 90
MB = 1024**2
DEEPZOOM_NS = "{http://schemas.microsoft.com/deepzoom/2008}"
LUA_SCRIPT = Path(__file__).with_suffix(".lua")
TOOLS_HINT = "run `make bench-tools` (Debian's nginx-core and wrk, with apt)"

Tile = tuple[int, int, int]  # level, col, row


# --- what the viewer is told -----------------------------------------------------------------


@dataclass(frozen=True)
class Pyramid:
    """The Deep Zoom geometry a descriptor states, and where its tiles are."""

    width: int
    height: int
    tile_size: int
    overlap: int
    format: str
    base: str  # URL path the tile paths are appended to
    signed: bool  # base is a signed link (no session needed)

    @property
    def level_count(self) -> int:
        return math.ceil(math.log2(max(self.width, self.height))) + 1

    def level_size(self, level: int) -> tuple[int, int]:
        scale = 2 ** (self.level_count - 1 - level)
        return math.ceil(self.width / scale), math.ceil(self.height / scale)

    def level_tiles(self, level: int) -> tuple[int, int]:
        width, height = self.level_size(level)
        return math.ceil(width / self.tile_size), math.ceil(height / self.tile_size)

    def tile_box(self, tile: Tile) -> tuple[int, int, int, int]:
        """The tile's pixels in its level: left, top, right, bottom (overlap included)."""
        level, col, row = tile
        width, height = self.level_size(level)
        size, overlap = self.tile_size, self.overlap
        left = col * size - (overlap if col else 0)
        top = row * size - (overlap if row else 0)
        return (
            left,
            top,
            min(width, (col + 1) * size + overlap),
            min(height, (row + 1) * size + overlap),
        )

    def with_tiles(self, tile_size: int, overlap: int) -> Pyramid:
        """The same image cut into other tiles."""
        return dataclasses.replace(self, tile_size=tile_size, overlap=overlap)

    def path(self, tile: Tile) -> str:
        level, col, row = tile
        return f"{self.base}{level}/{col}_{row}.{self.format}"


def parse_descriptor(xml: bytes, dzi_path: str) -> Pyramid:
    """The geometry and tile base URL of a DZI; the old session-checked tiles without `Url`."""
    image = ElementTree.fromstring(xml)
    size = image.find(f"{DEEPZOOM_NS}Size")
    if image.tag != f"{DEEPZOOM_NS}Image" or size is None:
        raise RuntimeError(f"not a Deep Zoom descriptor: {xml[:200]!r}")
    url = image.get("Url")
    if url:
        base = urlsplit(urljoin(dzi_path, url)).path
    else:
        base = dzi_path.removesuffix(".dzi") + "_files/"
    return Pyramid(
        width=int(size.get("Width")),
        height=int(size.get("Height")),
        tile_size=int(image.get("TileSize")),
        overlap=int(image.get("Overlap")),
        format=image.get("Format"),
        base=base if base.endswith("/") else base + "/",
        signed=bool(url),
    )


def sample_tiles(pyramid: Pyramid, levels: int, count: int) -> list[Tile]:
    """A fixed random sample of the tiles of the ``levels`` highest levels, in level order."""
    top = pyramid.level_count - 1
    every = [
        (level, col, row)
        for level in range(max(0, top - levels + 1), top + 1)
        for col in range(pyramid.level_tiles(level)[0])
        for row in range(pyramid.level_tiles(level)[1])
    ]
    return sorted(random.Random(SEED).sample(every, min(count, len(every))))


def plain_tile(pyramid: Pyramid, tile: Tile) -> Tile:
    """The 254 px tile (DeepZoomGenerator's old geometry) of the same level holding the centre."""
    level = tile[0]
    left, top, right, bottom = pyramid.tile_box(tile)
    cols, rows = pyramid.with_tiles(PLAIN_TILE_SIZE, PLAIN_OVERLAP).level_tiles(level)
    col = min(cols - 1, (left + right) // 2 // PLAIN_TILE_SIZE)
    row = min(rows - 1, (top + bottom) // 2 // PLAIN_TILE_SIZE)
    return level, col, row


# --- the stack: gunicorn behind nginx ---------------------------------------------------------


def nginx_binary() -> str | None:
    """nginx on PATH, or Debian's /usr/sbin/nginx (not on a user's PATH there)."""
    found = shutil.which("nginx")
    if found:
        return found
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def require_tools() -> tuple[str, str]:
    nginx, wrk = nginx_binary(), shutil.which("wrk")
    missing = [name for name, found in (("nginx", nginx), ("wrk", wrk)) if not found]
    if missing:
        sys.exit(f"{' and '.join(missing)} not found: {TOOLS_HINT}.")
    modules = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
    if "http_secure_link_module" not in modules:
        sys.exit(f"{nginx} lacks the secure_link module: {TOOLS_HINT}.")
    return nginx, wrk


NGINX_CONF = """\
{user}worker_processes auto;
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
daemon off;

events {{
    worker_connections 4096;
}}

http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    server_tokens off;
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65s;
    # The load generator's few connections carry all requests (a browser opens more).
    keepalive_requests 1000000;
    client_body_temp_path {folder}/client_temp;
    proxy_temp_path {folder}/proxy_temp;
    fastcgi_temp_path {folder}/fastcgi_temp;
    uwsgi_temp_path {folder}/uwsgi_temp;
    scgi_temp_path {folder}/scgi_temp;

    upstream cytomark_web {{
        server {upstream};
        keepalive 32;
        keepalive_timeout 60s;
    }}

    server {{
        listen {listen};
        server_name _;
        set $tile_dir {tile_dir};
        set $tile_secret "{tile_secret}";
        include {tiles_conf};

        location /static-tiles/ {{
            root {static_root};
        }}

        location / {{
            proxy_pass http://cytomark_web;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Real-IP $remote_addr;
            proxy_redirect off;
            proxy_buffers 16 64k;
            proxy_buffer_size 64k;
        }}
    }}
}}
"""


def nginx_user_line(same_user: bool) -> str:
    """As root, workers as `nobody` (in production nginx and the app are different users, so
    tiles the app writes must be readable by others), or as root with ``same_user``; otherwise
    the caller's own user."""
    if os.geteuid() != 0:
        return ""
    if same_user:
        return "user root;\n"
    nobody = pwd.getpwnam("nobody")
    return f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};\n"


def log_tail(log: Path, lines: int = 30) -> str:
    """The end of a server's log, for an error message (the folder goes with the run)."""
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no {log})"


def wait_for(port: int, path: str, process: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log_tail(log)}")
        with contextlib.suppress(OSError):
            connection = http.client.HTTPConnection(HOST, port, timeout=5)
            try:
                connection.request("GET", path)
                if connection.getresponse().status == 200:
                    return
            finally:
                connection.close()
        time.sleep(0.2)
    raise RuntimeError(
        f"{what} did not answer {path} within {START_TIMEOUT_SECONDS} s:\n{log_tail(log)}"
    )


@contextlib.contextmanager
def stack(
    nginx: str, folder: Path, env: dict[str, str], same_user: bool
) -> Iterator[tuple[int, subprocess.Popen]]:
    """gunicorn (deploy/gunicorn.conf.py) behind nginx; yields nginx's port and gunicorn."""
    web_port, port = benchenv.free_port(HOST), benchenv.free_port(HOST)
    gunicorn_log = folder / "gunicorn.log"
    server_env = {
        **env,
        "WEB_CONCURRENCY": "2",
        "GUNICORN_THREADS": "4",
        "GUNICORN_BIND": f"{HOST}:{web_port}",
    }
    command = [
        sys.executable,
        *("-m", "gunicorn", "-c", str(ROOT / "deploy" / "gunicorn.conf.py")),
        "config.wsgi:application",
    ]
    nginx_folder = folder / "nginx"
    nginx_folder.mkdir()
    conf = nginx_folder / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            user=nginx_user_line(same_user),
            folder=nginx_folder,
            upstream=f"{HOST}:{web_port}",
            listen=f"{HOST}:{port}",
            tile_dir=env["TILE_DIR"],
            tile_secret=env["TILE_TOKEN_SECRET"],
            tiles_conf=ROOT / "deploy" / "nginx-tiles.conf",
            static_root=folder / "static",
        )
    )
    nginx_command = [
        nginx,
        "-p",
        str(nginx_folder),
        "-c",
        str(conf),
        "-e",
        str(nginx_folder / "error.log"),
    ]
    checked = subprocess.run([*nginx_command, "-t", "-q"], capture_output=True, text=True)
    if checked.returncode:
        raise RuntimeError(f"nginx refuses {conf}:\n{checked.stderr.strip()}")
    with gunicorn_log.open("ab") as log:
        web = subprocess.Popen(command, cwd=ROOT, env=server_env, stdout=log, stderr=log)
    front = None
    try:
        wait_for(web_port, "/health/", web, "gunicorn", gunicorn_log)
        front = subprocess.Popen(
            nginx_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(port, "/health/", front, "nginx", nginx_folder / "error.log")
        yield port, web
    finally:
        if front is not None and front.poll() is None:
            front.terminate()
            front.wait(timeout=30)
        benchenv.stop_server(web)


class WorkerMemory:
    """Samples the peak RSS (VmHWM) of a server's worker processes in a background thread."""

    def __init__(self, master: subprocess.Popen, every: float = 0.1):
        self.master, self.every = master, every
        self.peaks: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.every)

    def sample(self) -> None:
        for pid in self._workers():
            with contextlib.suppress(OSError, AttributeError):
                status = Path(f"/proc/{pid}/status").read_text()
                peak = int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024
                self.peaks[pid] = max(peak, self.peaks.get(pid, 0))

    def _workers(self) -> list[int]:
        pid = self.master.pid
        try:
            return [
                int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            ]
        except OSError:  # a kernel without CONFIG_PROC_CHILDREN
            return web_process._children(pid)

    def peak(self) -> int:
        self.sample()
        return max(self.peaks.values(), default=0)


# --- clients ----------------------------------------------------------------------------------


@dataclass
class Pass:
    name: str
    client: str
    requests: int = 0
    seconds: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    not_ok: Counter = field(default_factory=Counter)  # status (or "connection") -> count
    first_not_ok: str = ""
    peak_rss: int = 0
    note: str = ""

    @property
    def failed(self) -> bool:
        return bool(self.not_ok) or not self.requests

    @property
    def rate(self) -> float:
        return self.requests / self.seconds


def cookie_header(cookies: dict[str, str]) -> str:
    return "; ".join(f"{name}={value}" for name, value in cookies.items())


def log_in(port: int, username: str, password: str) -> dict[str, str]:
    """POST /login/ as the login form does (a CSRF cookie and the same token in the form); the
    cookies of the session it answers with."""
    token = secrets.token_hex(16)  # Django accepts a 32-character secret as cookie and token
    body = urlencode({"username": username, "password": password, "csrfmiddlewaretoken": token})
    connection = http.client.HTTPConnection(HOST, port, timeout=30)
    try:
        connection.request(
            "POST",
            "/login/",
            body,
            {"Content-Type": "application/x-www-form-urlencoded", "Cookie": f"csrftoken={token}"},
        )
        response = connection.getresponse()
        response.read()
        cookies = SimpleCookie()
        for header in response.msg.get_all("Set-Cookie") or []:
            cookies.load(header)
    finally:
        connection.close()
    if response.status != 302 or "sessionid" not in cookies:
        raise RuntimeError(f"login as {username} failed: {response.status} {response.reason}")
    return {name: morsel.value for name, morsel in cookies.items()}


def get(port: int, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def python_pass(
    name: str, port: int, paths: list[str], headers: dict[str, str], args
) -> tuple[Pass, list[bytes | None]]:
    """Each path once over ``args.connections`` keep-alive connections (a thread each); the pass
    and the bodies of the 200 answers, in the order of ``paths``."""
    connections = args.connections
    bodies: list[bytes | None] = [None] * len(paths)
    latencies: list[float] = []
    result = Pass(name, "Python, each tile once")
    lock, next_index = threading.Lock(), iter(range(len(paths)))
    start = threading.Barrier(connections + 1)

    def work() -> None:
        connection = http.client.HTTPConnection(HOST, port, timeout=60)
        mine = []
        start.wait()
        while True:
            with lock:
                index = next(next_index, None)
            if index is None:
                break
            before = time.perf_counter()
            try:
                connection.request("GET", paths[index], headers=headers)
                response = connection.getresponse()
                body = response.read()
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                with lock:
                    result.not_ok["connection"] += 1
                    result.first_not_ok = result.first_not_ok or f"{paths[index]}: {exc!r}"
                continue
            mine.append((time.perf_counter() - before) * 1000)
            if response.status == 200:
                bodies[index] = body
            else:
                with lock:
                    result.not_ok[response.status] += 1
                    if not result.first_not_ok:
                        result.first_not_ok = f"{response.status} {body[:160]!r}"
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=work) for _ in range(connections)]
    for thread in threads:
        thread.start()
    cpu = time.process_time()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    result.requests = len(latencies)
    if latencies:
        result.p50_ms = benchenv.percentile(latencies, 50)
        result.p95_ms = benchenv.percentile(latencies, 95)
    result.note = f"client CPU {time.process_time() - cpu:.1f} s"
    return result, bodies


def wrk_pass(
    name: str, wrk: str, port: int, paths: list[str], headers: dict[str, str], args, folder: Path
) -> Pass:
    """The paths round and again for ``args.duration`` s with wrk (tiles_http.lua)."""
    listing = folder / f"paths-{len(list(folder.glob('paths-*')))}.txt"
    listing.write_text("\n".join(paths) + "\n")
    threads = max(1, min(args.connections, os.cpu_count() or 1))
    command = [
        wrk,
        *("-t", str(threads), "-c", str(args.connections), "-d", f"{args.duration}s"),
        *("--timeout", "10s", "-s", str(LUA_SCRIPT)),
        *(item for key, value in headers.items() for item in ("-H", f"{key}: {value}")),
        f"http://{HOST}:{port}",
        *("--", str(listing), str(threads)),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=args.duration + 60)
    line = next((row for row in done.stdout.splitlines() if row.startswith("tiles_http ")), None)
    if done.returncode or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    head, _, first = line.partition(" first_not_ok=")
    figures = dict(item.split("=", 1) for item in head.split()[1:])
    result = Pass(name, f"wrk -t{threads} -c{args.connections}, {args.duration} s")
    result.requests = int(figures["requests"])
    result.seconds = int(figures["duration_us"]) / 1e6
    result.p50_ms = int(figures["p50_us"]) / 1000
    result.p95_ms = int(figures["p95_us"]) / 1000
    if int(figures["not_ok"]):
        result.not_ok["not 200"] = int(figures["not_ok"])
    for kind in ("connect", "read", "write", "timeout"):
        if int(figures[kind]):
            result.not_ok[f"socket {kind}"] = int(figures[kind])
    result.first_not_ok = first
    return result


# --- colour -----------------------------------------------------------------------------------


def read_region_tile(slide, geometry: Pyramid, tile: Tile):
    """What OpenSlide shows of the tile's area, made as DeepZoomGenerator makes a tile (the
    slide level best for the downsample, the region resized to the tile with Lanczos, on
    white), as a numpy array."""
    import numpy as np
    from PIL import Image

    level = tile[0]
    left, top, right, bottom = geometry.tile_box(tile)
    scale = 2 ** (geometry.level_count - 1 - level)
    x, y = left * scale, top * scale
    width = min(geometry.width - x, (right - left) * scale)
    height = min(geometry.height - y, (bottom - top) * scale)
    best = slide.get_best_level_for_downsample(scale)
    downsample = slide.level_downsamples[best]
    region = slide.read_region(
        (x, y), best, (math.ceil(width / downsample), math.ceil(height / downsample))
    )
    flat = Image.new("RGB", region.size, "white")
    flat.paste(region, mask=region.split()[3])
    if flat.size != (right - left, bottom - top):
        flat = flat.resize((right - left, bottom - top), Image.Resampling.LANCZOS)
    return np.asarray(flat, dtype=np.int16)


def mean_abs_diff(data: bytes, reference) -> float:
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        decoded = np.asarray(image.convert("RGB"), dtype=np.int16)
    if decoded.shape != reference.shape:
        return math.inf
    return float(np.abs(decoded - reference).mean())


# --- the run ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20000, help="scan width and height, px")
    parser.add_argument("--tiles", type=int, default=2000, help="tiles in the fixed sample")
    parser.add_argument("--levels", type=int, default=4, help="highest Deep Zoom levels sampled")
    parser.add_argument("--connections", type=int, default=8, help="concurrent connections")
    parser.add_argument("--duration", type=int, default=10, help="seconds of each wrk pass")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of each pass (warm and static in turn)"
    )
    parser.add_argument("--check", type=int, default=200, help="tiles compared with OpenSlide")
    parser.add_argument("--redis-db", type=int, default=12, help="an empty Redis database")
    parser.add_argument(
        "--nginx-as-app-user",
        action="store_true",
        help="as root: nginx's workers as root too, not as nobody (files need not be readable "
        "by others then, as they must be in production)",
    )
    args = parser.parse_args()
    nginx, wrk = require_tools()
    benchenv.require_empty_redis_db(args.redis_db, "--redis-db")

    with (
        tempfile.TemporaryDirectory(prefix="cytomark-bench-tiles-http-") as temporary,
        benchenv.temporary_database(DB_NAME) as db_url,
    ):
        folder = Path(temporary)
        folder.chmod(0o755)  # nginx's workers read the tiles and static files in it
        tile_dir = folder / "tiles"
        tile_dir.mkdir()
        env = benchenv.project_env(
            settings="config.settings.production",
            db_url=db_url,
            folder=folder,
            redis_db=args.redis_db,
            celery_db=args.redis_db,
            SECRET_KEY=secrets.token_urlsafe(64),
            ALLOWED_HOSTS="127.0.0.1,localhost",
            SECURE_SSL_REDIRECT="False",
            TILE_DIR=str(tile_dir),
            TILE_TOKEN_SECRET=secrets.token_hex(32),
            TILE_ACCEL_REDIRECT="/_tile_files/",
        )
        benchenv.setup_django(env)
        try:
            ok = run(folder, env, nginx, wrk, args)
        finally:
            benchenv.delete_redis_keys(args.redis_db, "*")
    sys.exit(0 if ok else 1)


@dataclass
class Served:
    """What the HTTP part of the run found: the geometry, the tile list, the passes, the cold
    pass's answers and, for the colour check, a sample of the tiles fetched again."""

    pyramid: Pyramid
    tiles: list[Tile]
    passes: list[Pass]
    bodies: list[bytes | None]
    checked: list[int]
    again: list[tuple[int, bytes]]
    workers: int


def run(folder: Path, env: dict[str, str], nginx: str, wrk: str, args) -> bool:
    """The four passes and the checks; False when a pass had errors or a check failed."""
    from django.contrib.auth import get_user_model

    from annotator.models import Membership
    from annotator.scans import local_path

    User = get_user_model()
    owner = User.objects.create_user("bench-coordinator")
    started = time.perf_counter()
    study, scan, _ = benchenv.register_scan(
        folder, size=args.size, cells=100, seed=SEED, user=owner
    )
    print(
        f"scan: {args.size} x {args.size} px synthetic JPEG TIFF, made and registered in "
        f"{time.perf_counter() - started:.1f} s",
        flush=True,
    )
    print(f"load average (1, 5, 15 min) before the passes: {_load()}", flush=True)
    password = secrets.token_urlsafe(16)
    annotator = User.objects.create_user("bench-annotator", password=password)
    Membership.objects.create(study=study, user=annotator, role=Membership.Role.ANNOTATOR)

    served = serve(folder, env, nginx, wrk, args, scan.pk, ("bench-annotator", password))
    pyramid, tiles = served.pyramid, served.tiles
    plain_tiles = [plain_tile(pyramid, tile) for tile in tiles]
    path = local_path(scan)
    loops = [plain_loop(path, plain_tiles) for _ in range(args.rounds)]  # the best counts
    loop, plain_made = min(loops, key=lambda made: made[0].seconds)
    plain = Pass(
        "b) plain DeepZoomGenerator loop",
        f"in-process, one thread, best of {args.rounds}" if args.rounds > 1 else "in-process",
    )
    plain.requests, plain.seconds = len(loop.latencies_ms), loop.seconds
    plain.p50_ms, plain.p95_ms = loop.p50, loop.p95
    print_pass(plain)

    print(f"load average after them: {_load()} on {os.cpu_count()} cores", flush=True)
    ok = report([*served.passes[:3], plain, *served.passes[3:]], served.workers)
    ok &= colour_check(path, served, plain_tiles, plain_made)
    return ok


def serve(folder: Path, env, nginx: str, wrk: str, args, scan_id: int, login) -> Served:
    """Start the stack, log in, read the descriptor and run the cold, warm and static passes."""
    with (
        stack(nginx, folder, env, args.nginx_as_app_user) as (port, web),
        WorkerMemory(web) as memory,
    ):
        session = {"Cookie": cookie_header(log_in(port, *login))}
        dzi_path = f"/api/v1/scans/{scan_id}/tiles/scan.dzi"
        status, xml = get(port, dzi_path, session)
        if status != 200:
            raise RuntimeError(f"GET {dzi_path}: {status} {xml[:200]!r}")
        pyramid = parse_descriptor(xml, dzi_path)
        tiles = sample_tiles(pyramid, args.levels, args.tiles)
        paths = [pyramid.path(tile) for tile in tiles]
        headers = {} if pyramid.signed else session
        levels = sorted({level for level, _, _ in tiles})
        where = (
            f"signed links {pyramid.base}"
            if pyramid.signed
            else f"{pyramid.base} with the session cookie (the descriptor has no Url)"
        )
        print(
            f"descriptor: {pyramid.tile_size} px tiles, overlap {pyramid.overlap}, "
            f"{pyramid.format}; {len(tiles)} tiles of Deep Zoom levels {levels[0]}-{levels[-1]}; "
            f"{args.connections} connections; tiles at {where}",
            flush=True,
        )
        cache = Path(env["TILE_DIR"]) / "cache"
        if tile_dir_files(cache):
            raise RuntimeError(f"the tile cache is not fresh: files in {cache}")

        colds = []
        for index in range(args.rounds):  # each round from an empty tile cache; the best counts
            if index:
                shutil.rmtree(cache, ignore_errors=True)
            cold, bodies = python_pass("cold tiles (fresh cache)", port, paths, headers, args)
            cold.peak_rss = memory.peak()
            cold.note += f"; {tile_dir_files(cache)} files in TILE_DIR/cache after it"
            print_pass(cold)
            colds.append(cold)
            if cold.failed:
                break
        cold = best(colds)

        passes = [cold]
        if cold.failed:
            passes.append(wrk_pass("warm tiles", wrk, port, paths, headers, args, folder))
            passes.append(Pass(STATIC, "not run: the cold pass failed"))
        else:
            static_paths = write_static(folder / "static", tiles, bodies)
            warm, static = [], []
            for _ in range(args.rounds):  # taking turns: other load on the cores hits both
                warm.append(wrk_pass("warm tiles", wrk, port, paths, headers, args, folder))
                warm[-1].peak_rss = memory.peak()
                print_pass(warm[-1])
                static.append(wrk_pass(STATIC, wrk, port, static_paths, {}, args, folder))
                print_pass(static[-1])
            ceiling, _ = python_pass(CEILING, port, static_paths, {}, args)
            print_pass(ceiling)
            warm, static = best(warm), best(static)
            passes += [warm, static, ceiling]
        if any(one.failed for one in passes):
            print(f"nginx's error log ends:\n{log_tail(folder / 'nginx' / 'error.log', 8)}")

        step = max(1, len(tiles) // max(1, args.check))
        checked = list(range(0, len(tiles), step))[: args.check]
        again = [get(port, paths[index], headers) for index in checked]
        return Served(pyramid, tiles, passes, bodies, checked, again, len(memory.peaks))


def report(passes: list[Pass], workers: int) -> bool:
    """The table and the goals; False when a pass over HTTP had errors."""
    cold, warm, static, plain = passes[:4]
    print()
    row = "{:<36} {:<30} {:>9} {:>8} {:>8} {:>12}"
    print(row.format("pass", "client", "tiles/s", "p50 ms", "p95 ms", "workers RSS"))
    for one in passes:
        rate = "errors" if one.failed else f"{one.rate:.0f}"
        rss = f"{one.peak_rss / MB:.0f} MB" if one.peak_rss else ""
        print(row.format(one.name, one.client, rate, f"{one.p50_ms:.2f}", f"{one.p95_ms:.2f}", rss))
    print(
        f"(gunicorn: {workers} worker processes over the run; 'workers RSS' is the largest "
        "peak RSS, VmHWM, of any of them by the end of the pass)"
    )
    ok = True
    for one in passes:
        if one.failed:
            ok = False
            print(f"{one.name}: ERRORS {dict(one.not_ok)}, first: {one.first_not_ok} -> no rate")
    warm_goal = f"goal: warm tiles >= {WARM_GOAL:.0%} of nginx's static rate:"
    if warm.failed or static.failed:
        print(f"{warm_goal} not measured (errors)")
    else:
        share = warm.rate / static.rate
        print(f"{warm_goal} {share:.1%} -> {'met' if share >= WARM_GOAL else 'not met'}")
    cold_goal = f"goal: cold tiles >= {COLD_GOAL:g}x the plain loop's rate:"
    if cold.failed:
        print(f"{cold_goal} not measured (errors)")
    else:
        times = cold.rate / plain.rate
        print(f"{cold_goal} {times:.2f}x -> {'met' if times >= COLD_GOAL else 'not met'}")
    return ok


def colour_check(path: Path, served: Served, plain_tiles: list[Tile], plain_made) -> bool:
    """Checked tiles against read_region, by level, beside the plain loop's tiles; and the same
    tiles fetched after the warm pass against the cold pass's bytes."""
    import openslide

    pyramid = served.pyramid
    plain_geometry = pyramid.with_tiles(PLAIN_TILE_SIZE, PLAIN_OVERLAP)
    differences: dict[int, tuple[list[float], list[float]]] = {}
    unchanged = 0
    with openslide.open_slide(str(path)) as slide:
        for index, (status, data) in zip(served.checked, served.again, strict=True):
            body, tile = served.bodies[index], served.tiles[index]
            unchanged += status == 200 and data == body
            now, before = differences.setdefault(tile[0], ([], []))
            if body is None:
                now.append(math.inf)
            else:
                now.append(mean_abs_diff(body, read_region_tile(slide, pyramid, tile)))
            plain = plain_tiles[index]
            reference = read_region_tile(slide, plain_geometry, plain)
            before.append(mean_abs_diff(plain_made[plain].encoded, reference))
    print(
        f"\ncolour: {len(served.checked)} tiles of the list decoded and compared with OpenSlide "
        "read_region of the same area (mean abs difference over pixels and channels, 0-255; "
        f"bound {JPEG_TOLERANCE:g} a tile):"
    )
    worst = 0.0
    for level, (now, before) in sorted(differences.items()):
        worst = max(worst, *now)
        print(
            f"  level {level}: {len(now)} tiles, served mean {sum(now) / len(now):.2f} worst "
            f"{max(now):.2f}; the plain loop's tiles (the viewer's before) mean "
            f"{sum(before) / len(before):.2f} worst {max(before):.2f}"
        )
    within = worst <= JPEG_TOLERANCE
    print(f"  -> {'within' if within else 'NOT within'} JPEG tolerance (worst {worst:.2f})")
    print(
        f"the same {len(served.checked)} tiles fetched after the warm pass: {unchanged} "
        "byte-identical to the cold pass's"
    )
    return within and unchanged == len(served.checked)


def _load() -> str:
    """The machine's load average: other work on the cores skews every rate here."""
    return ", ".join(f"{value:.1f}" for value in os.getloadavg())


def tile_dir_files(folder: Path) -> int:
    return sum(1 for item in folder.rglob("*") if item.is_file()) if folder.is_dir() else 0


def write_static(root: Path, tiles: list[Tile], bodies: list[bytes | None]) -> list[str]:
    """The cold pass's bytes as plain files under ``root``/static-tiles/; their URL paths."""
    paths = []
    for (level, col, row), body in zip(tiles, bodies, strict=True):
        file = root / "static-tiles" / str(level) / f"{col}_{row}.jpeg"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(body)
        paths.append(f"/static-tiles/{level}/{col}_{row}.jpeg")
    for folder in [root, *root.rglob("*")]:
        if folder.is_dir():
            folder.chmod(0o755)
    return paths


def best(rounds: list[Pass]) -> Pass:
    """The fastest round, or the first with errors (a run with errors has no rate)."""
    failed = [one for one in rounds if one.failed]
    if failed:
        return failed[0]
    chosen = max(rounds, key=lambda one: one.rate)
    if len(rounds) > 1:
        chosen.client += f", best of {len(rounds)}"
        chosen.note = "rounds " + ", ".join(f"{one.rate:.0f}" for one in rounds) + " tiles/s"
    return chosen


def print_pass(one: Pass) -> None:
    if one.failed:
        errors = dict(one.not_ok)
        print(f"  {one.name}: {one.requests} answers, ERRORS {errors}", flush=True)
        return
    note = f" ({one.note})" if one.note else ""
    print(
        f"  {one.name}: {one.requests} tiles in {one.seconds:.1f} s, {one.rate:.0f} tiles/s, "
        f"p50 {one.p50_ms:.2f} ms, p95 {one.p95_ms:.2f} ms{note}",
        flush=True,
    )


if __name__ == "__main__":
    main()
