"""Provider metadata read by Airflow's ProvidersManager through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from kernel_provider import __version__

#: Class paths of the extra links in provider 0.1 (the same classes, re-exported there).
LEGACY_LINK_PATHS = (
    "kernel_provider.operators.kernel.KernelInvocationLink",
    "kernel_provider.operators.kernel.KernelLiveViewLink",
    "kernel_provider.decorators.kernel_browser.KernelBrowserLiveViewLink",
)


def _field(label: str, kind: str, description: str, default: Any = None) -> dict[str, Any]:
    """One connection-form field as provider info's ``conn-fields`` describe it (a JSON-schema type, nullable)."""
    schema: dict[str, Any] = {"type": [kind, "null"]}
    if default is not None:
        schema["default"] = default
    return {"label": label, "description": description, "schema": schema}


#: Every extra of the Kernel connection (see :mod:`kernel_provider.client.settings`), as Airflow 3.2+ reads them for
#: its connection form; the Airflow < 3.2 form widgets are built from the same list (``KernelHook``). Defaults are
#: the client's (a test keeps them in step).
CONNECTION_FIELDS: dict[str, dict[str, Any]] = {
    "project_id": _field(
        "Project ID", "string", "Sent as X-Kernel-Project-Id; leave empty for the org's default project."
    ),
    "dashboard_url": _field(
        "Dashboard URL",
        "string",
        "Base of the invocation links shown on tasks.",
        default="https://dashboard.onkernel.com",
    ),
    "request_timeout": _field(
        "Request timeout (s)",
        "number",
        "Read timeout of ordinary API calls. Sync invocations always get > 100 s.",
        default=30,
    ),
    "connect_timeout": _field("Connect timeout (s)", "number", "Time to establish a connection to Kernel.", default=10),
    "max_retries": _field(
        "Max retries",
        "integer",
        "Retries of a failed call that is safe to repeat (never a duplicate invoke).",
        default=5,
    ),
    "max_retry_wait": _field(
        "Max retry wait (s)",
        "number",
        "Seconds a call may spend retrying before it gives up (429s excepted).",
        default=120,
    ),
    "rate_limit_wait": _field(
        "Rate-limit wait (s)",
        "number",
        "Seconds a call may keep waiting out 429s (Retry-After honoured) before it gives up.",
        default=900,
    ),
    "ca_bundle": _field(
        "CA bundle", "string", "Path of a CA bundle file or directory to verify Kernel with; empty = the environment's."
    ),
    "allow_insecure_http": _field(
        "Allow plain http",
        "boolean",
        "Accept an http:// base URL to a host that is not loopback (the API key crosses unencrypted).",
        default=False,
    ),
}


#: The ``kernel://`` asset scheme (see :mod:`kernel_provider.assets.kernel`). Airflow 3 reads it as ``asset-uris``,
#: Airflow 2.11 as ``dataset-uris``: each version reads only its own key, so both are given.
ASSET_URIS: list[dict[str, Any]] = [
    {
        "schemes": ["kernel"],
        "handler": "kernel_provider.assets.kernel.sanitize_uri",
        "factory": "kernel_provider.assets.kernel.create_asset",
        "to_openlineage_converter": "kernel_provider.assets.kernel.convert_asset_to_openlineage",
    }
]


def get_provider_info() -> dict[str, Any]:
    """Describe the provider: its hook, connection form, operators, sensors, triggers, extra links and asset URIs."""
    return {
        "package-name": "airflow-provider-kernel",
        "name": "Kernel",
        "description": "Invoke Kernel (https://kernel.sh) app actions, the browser agents, from Airflow.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Kernel",
                "external-doc-url": "https://kernel.sh/docs",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Kernel",
                "python-modules": ["kernel_provider.hooks.kernel", "kernel_provider.hooks.kernel_browser"],
            }
        ],
        "operators": [
            {
                "integration-name": "Kernel",
                "python-modules": ["kernel_provider.operators.kernel", "kernel_provider.operators.land_files"],
            }
        ],
        "sensors": [{"integration-name": "Kernel", "python-modules": ["kernel_provider.sensors.kernel"]}],
        "triggers": [{"integration-name": "Kernel", "python-modules": ["kernel_provider.triggers.kernel"]}],
        "connection-types": [
            {
                "connection-type": "kernel",
                "hook-class-name": "kernel_provider.hooks.kernel.KernelHook",
                "hook-name": "Kernel",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "login"],
                    "relabeling": {"host": "Base URL", "password": "API key"},
                    "placeholders": {
                        "host": "https://api.onkernel.com",
                        "password": "sk_...",
                        "extra": '{"project_id": "proj_...", "request_timeout": 30}',
                    },
                },
                "conn-fields": CONNECTION_FIELDS,
            }
        ],
        "extra-links": [
            "kernel_provider.links.KernelInvocationLink",
            "kernel_provider.links.KernelLiveViewLink",
            "kernel_provider.links.KernelBrowserLiveViewLink",
            # Where 0.1 defined them: Airflow 2 finds a serialized DAG's links by these paths until it re-parses it.
            *LEGACY_LINK_PATHS,
        ],
        "task-decorators": [
            {"class-name": "kernel_provider.decorators.kernel.kernel_task", "name": "kernel"},
            {"class-name": "kernel_provider.decorators.kernel_browser.kernel_browser_task", "name": "kernel_browser"},
        ],
        "asset-uris": ASSET_URIS,
        "dataset-uris": ASSET_URIS,
    }
