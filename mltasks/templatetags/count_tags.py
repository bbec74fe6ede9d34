"""Template filters of the smear-count pages."""

from django import template

from annotator.differential import share_text

register = template.Library()


@register.filter
def share_ci(row: dict | None) -> str:
    """A share row ({count, share, ci}) as "12.5% (8.1-18.9%)", or "-" where nothing counted."""
    return share_text(row)


@register.filter
def group_row(rows: list[dict] | None, name: str) -> dict | None:
    """The row of the group called `name` among a differential's group rows."""
    return next((row for row in rows or [] if row["group"] == name), None)
