"""Registering values with Airflow's secret masker."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def mask_url(url: str) -> None:
    """Register a URL that is a credential (a live view with control) with Airflow's secret masker, so logs and
    rendered fields show ``***`` in its place. Best effort: the provider never logs such a URL anyway."""
    try:
        from airflow.providers.common.compat.sdk import mask_secret

        mask_secret(url)
    except Exception:  # masking is defence in depth
        log.debug("Could not register a live-view URL with the secret masker.")
