"""Test profile: the machine's real PostgreSQL and Redis, never a silent SQLite fallback."""

from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import BASE_DIR, DATABASES, REDIS_URL, env

if not DATABASES["default"]["ENGINE"].endswith(("postgresql", "postgis")):
    raise ImproperlyConfigured(
        "The tests run against PostgreSQL: set DATABASE_URL=postgres://... "
        f"(got engine {DATABASES['default']['ENGINE']!r})."
    )
if not REDIS_URL:
    raise ImproperlyConfigured("The tests run against Redis: set REDIS_URL=redis://...")

DEBUG = False
# Celery talks to the real Redis in tests about background work.
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=REDIS_URL)
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
TEST_RUN_DIR = BASE_DIR / "var" / "test"
# A Celery worker started by a test is pointed at that test's media folder.
MEDIA_ROOT = Path(env.str("MEDIA_ROOT", default=str(TEST_RUN_DIR / "media")))
SCAN_CACHE_DIR = TEST_RUN_DIR / "scan-cache"
TILE_DIR = TEST_RUN_DIR / "tiles"
SCAN_IMPORT_ROOTS = [(TEST_RUN_DIR / "import").resolve()]
WHITENOISE_USE_FINDERS = True
# Runs are logged to MLflow only by tests that set a store of their own (tests/test_tracking.py).
MLFLOW_TRACKING_URI = env.str("MLFLOW_TRACKING_URI", default="")
