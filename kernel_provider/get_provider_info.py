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


def get_provider_info() -> dict[str, Any]:
    """Describe the provider: its hook, connection form, operators, sensors, triggers and extra links."""
    return {
        "package-name": "airflow-provider-kernel",
        "name": "Kernel",
        "description": "Invoke [Kernel](https://www.onkernel.com) app actions (browser agents) from Airflow.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "Kernel",
                "external-doc-url": "https://www.onkernel.com/docs",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "Kernel",
                "python-modules": ["kernel_provider.hooks.kernel", "kernel_provider.hooks.kernel_browser"],
            }
        ],
        "operators": [{"integration-name": "Kernel", "python-modules": ["kernel_provider.operators.kernel"]}],
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
                "conn-fields": {
                    "project_id": {
                        "label": "Project ID",
                        "description": "Sent as X-Kernel-Project-Id; leave empty for the org's default project.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "dashboard_url": {
                        "label": "Dashboard URL",
                        "description": "Base of the invocation links shown on tasks.",
                        "schema": {"type": ["string", "null"], "default": "https://dashboard.onkernel.com"},
                    },
                    "request_timeout": {
                        "label": "Request timeout (s)",
                        "description": "Read timeout of ordinary API calls. Sync invocations always get > 100 s.",
                        "schema": {"type": ["number", "null"], "default": 30},
                    },
                    "max_retries": {
                        "label": "Max retries",
                        "description": "Retries of a failed call that is safe to repeat (never a duplicate invoke).",
                        "schema": {"type": ["integer", "null"], "default": 5},
                    },
                },
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
    }
