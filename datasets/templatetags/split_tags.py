"""Template filters of the pages that list splits."""

from django import template

from datasets.splits import describe

register = template.Library()


@register.filter
def strategy_words(split) -> str:
    """The split's strategy, parameters and seed in words (`datasets.splits.describe`)."""
    return describe(split.strategy, split.params, split.seed)
