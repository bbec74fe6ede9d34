"""The site's routes plus a page and an API path that fail, for the tests of the 500 answers."""

from django.urls import path

from config.urls import handler400, handler403, handler404, handler500, urlpatterns

FAILURE_DETAIL = "secret-detail-of-the-failure"


def fail(request):
    raise RuntimeError(FAILURE_DETAIL)


urlpatterns = [
    *urlpatterns,
    path("failing/", fail),
    path("api/v1/failing/", fail),
]

__all__ = ["handler400", "handler403", "handler404", "handler500", "urlpatterns"]
