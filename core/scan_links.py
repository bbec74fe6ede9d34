"""Links that other apps put on a scan's annotation screen: the annotator app shows them but may
not import the apps that make them (mltasks' cell gallery, say), so each registers a provider
here in its AppConfig.ready."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class ScanLink:
    text: str
    url: str


LinkProvider = Callable[[object, object, object], list[ScanLink]]  # (user, study, scan)
_PROVIDERS: list[LinkProvider] = []


def register_scan_links(provider: LinkProvider) -> None:
    if provider not in _PROVIDERS:
        _PROVIDERS.append(provider)


def scan_links(user, study, scan) -> list[ScanLink]:
    """Every registered provider's links for the user on this scan of the study."""
    return [link for provider in _PROVIDERS for link in provider(user, study, scan)]
