"""Template filters of the report pages."""

from django import template

register = template.Library()


@register.filter
def fixed(value, digits: int = 3) -> str:
    """A number with a fixed count of decimals, or an en dash where it is undefined."""
    if value is None:
        return "\u2013"
    return f"{value:.{int(digits)}f}"
