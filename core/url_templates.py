"""URLs with placeholders, for page scripts that fill in an id known only in the browser.

The views hand every URL a script calls to the page in its json_script config, built with
reverse(), so that no script spells a route. Where the script learns the id itself (a new cell,
a queue item's token, a row of a table), the view sends `url_template(name, "{id}")` and the
script fills it in with `urlFor` (frontend/static/js/lib/http.js).
"""

from __future__ import annotations

from django.urls import reverse

# Digits stand in for a placeholder while reversing: every converter the routes use (int, slug,
# str) takes them, where reverse() would refuse "{id}" for an int.
_STAND_IN = 9_876_543_210_000


def url_template(viewname: str, *args) -> str:
    """`reverse(viewname, args=args)` in which an argument written "{name}" stays that
    placeholder; the other arguments are reversed as they are."""
    placeholders = {}
    values = []
    for index, arg in enumerate(args):
        if isinstance(arg, str) and arg.startswith("{") and arg.endswith("}"):
            stand_in = str(_STAND_IN + index)
            placeholders[stand_in] = arg
            arg = stand_in
        values.append(arg)
    url = reverse(viewname, args=values)
    for stand_in, placeholder in placeholders.items():
        url = url.replace(stand_in, placeholder)
    return url
