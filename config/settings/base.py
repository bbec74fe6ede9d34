"""Settings shared by every profile, all read from the environment.

With no environment at all this is the embedded profile of `make run`: SQLite, media on local
disk, an in-process cache and a Celery broker on the local file system, so a fresh machine needs
no database or broker server. `test.py` and `production.py` tighten it.
"""

import hashlib
import hmac
from pathlib import Path

import environ

BASE_DIR = Path(__file__).resolve().parent.parent.parent

env = environ.Env()
VAR_DIR = Path(env.str("VAR_DIR", default=str(BASE_DIR / "var"))).resolve()

SECRET_KEY = env.str("SECRET_KEY", default="django-insecure-embedded-demo-key-do-not-deploy")
DEBUG = env.bool("DEBUG", default=True)
# Pages answer failures with the site's error pages even under DEBUG; this brings back Django's
# technical 500 page (the traceback in the browser) where DEBUG is on too, for development.
DEBUG_TECHNICAL_500 = env.bool("DEBUG_TECHNICAL_500", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
CSRF_FAILURE_VIEW = "core.pages.csrf_failure"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "annotator",
    "datasets",
    "mltasks",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "core.http.RefuseNulMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "core.pages.ErrorPagesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "frontend" / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}"),
}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # The web server and the embedded worker share the file: wait for a lock, don't fail.
    DATABASES["default"].setdefault("OPTIONS", {})["timeout"] = 30
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="cytomark"),
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
# Encoded Deep Zoom tiles: the shared Redis cache where there is one, else a larger in-process
# cache than Django's default 300 entries (a screen of tiles is about 40).
CACHES["tiles"] = (
    dict(CACHES["default"])
    if REDIS_URL
    else {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
        "LOCATION": "tiles",
        "OPTIONS": {"MAX_ENTRIES": env.int("TILE_CACHE_ENTRIES", default=20000)},
    }
)
TILE_CACHE_ALIAS = "tiles"
# Sessions are read on every tile request: from the cache first, the database behind it.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
TILE_CACHE_SECONDS = env.int("TILE_CACHE_SECONDS", default=7 * 24 * 3600)
# Tiles made once are files here (nginx reads the same folder in production), beside the users'
# access epochs that their signed tile links name (annotator/tile_links.py, docs/tiles.md).
TILE_DIR = Path(env.str("TILE_DIR", default=str(VAR_DIR / "tiles")))
# The key of tile links; nginx must be given the same value (deploy/nginx-tiles.conf). By
# default derived from SECRET_KEY, so that rotating one rotates the other.
TILE_TOKEN_SECRET = env.str(
    "TILE_TOKEN_SECRET",
    default=hmac.new(SECRET_KEY.encode(), b"cytomark tile links", hashlib.sha256).hexdigest(),
)
# How long a tile link lives; the viewer fetches a new one before it expires.
TILE_LINK_SECONDS = env.int("TILE_LINK_SECONDS", default=3600)
# Where nginx sends tile files from (an `internal` location); empty: the app sends the bytes.
TILE_ACCEL_REDIRECT = env.str("TILE_ACCEL_REDIRECT", default="")
# Open slides kept per web process (each holds a file descriptor and OpenSlide's own cache).
SLIDE_HANDLE_CACHE_SIZE = env.int("SLIDE_HANDLE_CACHE_SIZE", default=16)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "home"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-gb"
TIME_ZONE = env.str("TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

# Files: scans, patches and exports live in the default storage (local disk or S3).
MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(VAR_DIR / "media")))
STATIC_URL = "/static/"
STATIC_ROOT = Path(env.str("STATIC_ROOT", default=str(VAR_DIR / "static")))
# OpenSeadragon and tus-js-client come from the npm registry (frontend/package.json, installed by
# `make install`), served under static/vendor/.
OPENSEADRAGON_BUILD = BASE_DIR / "frontend" / "node_modules" / "openseadragon" / "build"
TUS_CLIENT_DIST = BASE_DIR / "frontend" / "node_modules" / "tus-js-client" / "dist"
STATICFILES_DIRS = [BASE_DIR / "frontend" / "static"] + [
    (prefix, folder)
    for prefix, folder in [("vendor", OPENSEADRAGON_BUILD), ("vendor/tus", TUS_CLIENT_DIST)]
    if folder.is_dir()
]
WHITENOISE_USE_FINDERS = DEBUG

STORAGE_BACKEND = env.str("STORAGE_BACKEND", default="local")
if STORAGE_BACKEND == "s3":
    _default_storage = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.str("AWS_STORAGE_BUCKET_NAME"),
            "endpoint_url": env.str("AWS_S3_ENDPOINT_URL", default=None),
            "region_name": env.str("AWS_S3_REGION_NAME", default=None),
            "access_key": env.str("AWS_ACCESS_KEY_ID", default=None),
            "secret_key": env.str("AWS_SECRET_ACCESS_KEY", default=None),
            "default_acl": None,
            "querystring_auth": True,
            "file_overwrite": False,
        },
    }
elif STORAGE_BACKEND == "local":
    _default_storage = {"BACKEND": "django.core.files.storage.FileSystemStorage"}
else:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"STORAGE_BACKEND must be 'local' or 's3', not {STORAGE_BACKEND!r}")
STORAGES = {
    "default": _default_storage,
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

# Where `add_scans` and the API may read scan files from on the server's disk.
SCAN_IMPORT_ROOTS = [
    Path(p).resolve()
    for p in env.list(
        "SCAN_IMPORT_ROOTS", default=[str(VAR_DIR / "import"), str(VAR_DIR / "synthetic")]
    )
]
# Local copies of scans kept in remote storage, for OpenSlide (which needs a file path).
SCAN_CACHE_DIR = Path(env.str("SCAN_CACHE_DIR", default=str(VAR_DIR / "scan-cache")))
# Resumable uploads (the tus protocol, annotator/uploads.py): the largest file one upload may
# announce, the largest body one PATCH may carry, how long an unfinished upload is kept, and the
# local folder the partial files grow in (by default MEDIA_ROOT/uploads; always local disk, even
# when scans are stored in S3, because each PATCH appends to the file).
SCAN_UPLOAD_MAX_BYTES = env.int("SCAN_UPLOAD_MAX_BYTES", default=20 * 1024**3)
SCAN_UPLOAD_CHUNK_MAX_BYTES = env.int("SCAN_UPLOAD_CHUNK_MAX_BYTES", default=64 * 1024**2)
SCAN_UPLOAD_EXPIRY_HOURS = env.float("SCAN_UPLOAD_EXPIRY_HOURS", default=24.0)
SCAN_UPLOAD_DIR = env.str("SCAN_UPLOAD_DIR", default="")
# A .zip of a multi-file scan (a DICOM series, a MIRAX slide and its folder) is unpacked only
# within these bounds.
SCAN_ZIP_MAX_BYTES = env.int("SCAN_ZIP_MAX_BYTES", default=40 * 1024**3)
SCAN_ZIP_MAX_ENTRIES = env.int("SCAN_ZIP_MAX_ENTRIES", default=10_000)
# Cell patches: cut around each clicked cell at level 0, padded with this colour at the scan's
# edge (a study may set its own size in px or um).
PATCH_BACKGROUND = env.str("PATCH_BACKGROUND", default="#ffffff")
# Seconds to gather label saves before one task cuts the patches of a scan's new cells.
PATCH_BATCH_DELAY = env.float("PATCH_BATCH_DELAY", default=5.0)
# Side of the tiles the leukocyte detector reads, in working pixels: bounds its memory (about
# 15 MB at 1024), never what it finds (docs/screening.md).
DETECTION_TILE_PX = env.int("DETECTION_TILE_PX", default=1024)
# Uploads are streamed to disk, never held in memory whole.
FILE_UPLOAD_MAX_MEMORY_SIZE = 2 * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
# JSON bodies nested deeper than this are refused (no payload of the API needs more than a few
# levels; Python's parser would exhaust its stack on a body nested thousands deep).
API_MAX_JSON_DEPTH = env.int("API_MAX_JSON_DEPTH", default=32)
# A training run whose estimated peak memory (mltasks/memory.py: decoded patches, network and
# optimiser, one pass's activations) exceeds this is refused before it starts. Set it to what
# the training worker's host can give one run.
TRAINING_MAX_MEMORY_GB = env.float("TRAINING_MAX_MEMORY_GB", default=8.0)
# Where training workers log their runs (params, per-epoch metrics, the report) with MLflow: a
# tracking server (http://host:5000) or a local file store; empty: not logged. MLFLOW_UI_URL,
# when set, is the MLflow UI the run's page links to (docs/training.md, "Tracking with MLflow").
MLFLOW_TRACKING_URI = env.str("MLFLOW_TRACKING_URI", default=f"file:{VAR_DIR / 'mlruns'}")
MLFLOW_UI_URL = env.str("MLFLOW_UI_URL", default="")
# A data-parallel run across hosts (config "hosts" > 1) meets at this host:port: the training
# worker that takes the run serves it, `manage.py join_training` on the other hosts connects
# (docs/training.md, "Several hosts").
TRAINING_RENDEZVOUS = env.str("TRAINING_RENDEZVOUS", default="127.0.0.1:29400")

# The file-system transport ignores the host; naming one keeps kombu from warning on every start
# that none was given.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://localhost/")
if CELERY_BROKER_URL.startswith("filesystem://"):
    _broker_dir = VAR_DIR / "broker"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "queue"),
        "data_folder_out": str(_broker_dir / "queue"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
        # How often an idle worker looks for messages; also how soon it notices a Ctrl-C.
        "polling_interval": 0.25,
    }
    for _folder in ("queue", "processed", "control"):
        (_broker_dir / _folder).mkdir(parents=True, exist_ok=True)
CELERY_RESULT_BACKEND = env.str(
    "CELERY_RESULT_BACKEND", default=f"file://{VAR_DIR / 'celery-results'}"
)
if CELERY_RESULT_BACKEND.startswith("file://"):
    # Celery's file-system backends need their folders to exist before a worker or the web
    # server touches them; the embedded profile makes them here.
    Path(CELERY_RESULT_BACKEND.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # Late acknowledgement + Redis: a task not acknowledged within the visibility timeout is
    # handed out again, so the timeout must outlast the longest task (training runs).
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=48 * 3600)
    }
# Long jobs (exports, training runs, patch batches) hold a lease that their worker renews every
# third of it; a job whose lease ran out lost its worker and is re-run from the start up to
# JOB_MAX_ATTEMPTS times, then failed with a message (docs/operations.md, "Job states").
JOB_LEASE_SECONDS = env.float("JOB_LEASE_SECONDS", default=60.0)
JOB_MAX_ATTEMPTS = env.int("JOB_MAX_ATTEMPTS", default=2)
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Queues by kind of work, so production can give each its own workers (deploy/compose.yaml);
# the embedded worker of `make run` consumes all of them.
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "annotator.tasks.*": {"queue": "tiles"},
    "datasets.tasks.*": {"queue": "exports"},
    "mltasks.tasks.*": {"queue": "training"},
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": [
        "core.http.BoundedJSONParser",
        "core.http.BoundedFormParser",
        "core.http.BoundedMultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "DEFAULT_PAGINATION_CLASS": "core.api.pagination.Pagination",
    "EXCEPTION_HANDLER": "core.api.errors.exception_handler",
    "DEFAULT_VERSIONING_CLASS": None,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Cytomark API",
    "DESCRIPTION": (
        "Annotate white blood cells on whole-slide scans, measure rater agreement, "
        "curate data sets and train classifiers."
    ),
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Redoc's and Swagger UI's files come from drf-spectacular-sidecar, its page template
    # (frontend/templates/drf_spectacular/redoc.html) links no web fonts, and Swagger UI asks no
    # online validator: the docs load nothing from outside the server.
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "COMPONENT_SPLIT_REQUEST": True,
    # Operations grouped (tagged) by the resource after this prefix: studies, scans, cells...
    "SCHEMA_PATH_PREFIX": r"/api/v1",
    # Exports and training runs share one set of job states (docs/operations.md).
    "ENUM_NAME_OVERRIDES": {"JobStatusEnum": "mltasks.models.TrainingRun.Status"},
}

# Logs go to the console; with LOG_FILE set (`make run`'s web server: var/log/web.log) they go
# to that file too, and CONSOLE_LOG_LEVEL keeps the console for warnings and errors.
LOG_FILE = env.str("LOG_FILE", default="")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"timed": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "level": env.str("CONSOLE_LOG_LEVEL", default="NOTSET"),
        },
        **(
            {
                "file": {
                    "class": "logging.handlers.WatchedFileHandler",
                    "filename": LOG_FILE,
                    "formatter": "timed",
                }
            }
            if LOG_FILE
            else {}
        ),
    },
    # Django's loggers write through the root's handlers only: Django's own console handler
    # (on under DEBUG) printed every record of theirs a second time.
    "loggers": {"django": {"handlers": [], "propagate": True}},
    "root": {
        "handlers": ["console", "file"] if LOG_FILE else ["console"],
        "level": env.str("LOG_LEVEL", default="INFO"),
    },
}
if LOG_FILE:
    # Refused requests (4xx, logged as warnings) are the client's business: file only; server
    # errors (5xx) reach the console too.
    LOGGING["handlers"]["errors"] = {"class": "logging.StreamHandler", "level": "ERROR"}
    LOGGING["loggers"]["django.request"] = {"handlers": ["file", "errors"], "propagate": False}
