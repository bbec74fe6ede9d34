"""Production profile: PostgreSQL, Redis, HTTPS behind a proxy; refuses an unsafe start."""

from django.core.exceptions import ImproperlyConfigured

from .base import *  # noqa: F403
from .base import DATABASES, REDIS_URL, REST_FRAMEWORK, SECRET_KEY, TILE_ACCEL_REDIRECT, env

DEBUG = env.bool("DEBUG", default=False)
if DEBUG:
    raise ImproperlyConfigured("DEBUG must be off in production.")
if (
    "SECRET_KEY" not in env.ENVIRON
    or SECRET_KEY.startswith("django-insecure")
    or len(SECRET_KEY) < 50
    or len(set(SECRET_KEY)) < 5
):
    raise ImproperlyConfigured(
        "SECRET_KEY must be set to a long random value (50+ characters), e.g. "
        "`python -c 'import secrets; print(secrets.token_urlsafe(64))'`."
    )
if TILE_ACCEL_REDIRECT and len(env.str("TILE_TOKEN_SECRET", default="")) < 32:
    raise ImproperlyConfigured(
        "TILE_TOKEN_SECRET must be set (32+ characters, e.g. `openssl rand -hex 32`) and given "
        "to nginx too: nginx checks the tile links the app signs (TILE_ACCEL_REDIRECT is set)."
    )
if "ALLOWED_HOSTS" not in env.ENVIRON:
    raise ImproperlyConfigured("ALLOWED_HOSTS must name the host(s) this site is served as.")
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    raise ImproperlyConfigured("Production needs DATABASE_URL=postgres://...")
if not REDIS_URL:
    raise ImproperlyConfigured("Production needs REDIS_URL for the shared cache.")

CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = env.str("CELERY_RESULT_BACKEND", default=REDIS_URL)
DATABASES["default"]["CONN_MAX_AGE"] = env.int("CONN_MAX_AGE", default=60)

# HTTPS is terminated by nginx, which sets X-Forwarded-Proto.
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=True)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = True
SECURE_HSTS_PRELOAD = True
SECURE_CONTENT_TYPE_NOSNIFF = True
SESSION_COOKIE_SECURE = True
CSRF_COOKIE_SECURE = True
X_FRAME_OPTIONS = "DENY"
WHITENOISE_USE_FINDERS = False
STORAGES = {
    **STORAGES,  # noqa: F405
    "staticfiles": {"BACKEND": "core.staticfiles.ModuleManifestStaticFilesStorage"},
}

# The API answers JSON only: the browsable API's HTML forms are a development convenience.
REST_FRAMEWORK = {
    **REST_FRAMEWORK,
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
}
