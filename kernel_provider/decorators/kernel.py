"""``@task.kernel``: a TaskFlow function whose return value is the payload of a Kernel app action.

::

    from airflow.sdk import task  # Airflow 2.11: from airflow.decorators import task


    @task.kernel(app_name="price-tracker", action_name="scrape", deferrable=True, timeout=3600)
    def scrape(url: str, day: str) -> dict:
        return {"url": url, "date": day}


    # The logical date, or the date an Airflow 3 run without one was queued for ({{ ds }} is undefined there).
    RUN_DATE = "{{ (logical_date if logical_date is defined else dag_run.run_after) | ds }}"
    prices = scrape("https://example.com", RUN_DATE)  # prices: the action's output (XCom return_value)
    pages = scrape.expand(url=["https://a.example", "https://b.example"], day=[RUN_DATE])

The function runs on the worker when the task starts (its arguments may be XComArgs and Jinja templates, rendered
first, as for any ``@task``); what it returns is the payload, sent as it is (never rendered as a template: it is
user data, and text such as ``{{ conn.kernel_default.password }}`` in it reaches Kernel unchanged), then everything
:class:`~kernel_provider.operators.kernel.KernelInvokeOperator` does follows (run record, create, deferral, log
streaming, cancel on kill). Every operator parameter is a keyword of the decorator. The task's return value is the
action's output.

Airflow finds the decorator through the provider info's ``task-decorators`` entry (name ``kernel``).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from datetime import timedelta
from typing import Any, ClassVar

from airflow.providers.common.compat.sdk import (
    DecoratedOperator,
    TaskDecorator,
    conf,
    context_merge,
    determine_kwargs,
    task_decorator_factory,
)

from kernel_provider.client.validation import encode_payload
from kernel_provider.decorators.output import XComPushForDecorators
from kernel_provider.operators.kernel import KernelInvokeOperator


class _KernelDecoratedOperator(XComPushForDecorators, DecoratedOperator, KernelInvokeOperator):  # type: ignore[misc]
    """:class:`KernelInvokeOperator` whose payload is the return value of ``python_callable``.

    :param python_callable: the decorated function; its return value is the payload (dict / list / number / bool,
        JSON text, or None for no payload).
    :param op_args: positional arguments of the function (templated; XComArgs resolved).
    :param op_kwargs: keyword arguments of the function (templated; XComArgs resolved).
    :param kwargs: every :class:`KernelInvokeOperator` and ``BaseOperator`` parameter (``app_name`` and
        ``action_name`` required). ``payload`` is not one of them: the function returns it.
    """

    template_fields: Sequence[str] = (*DecoratedOperator.template_fields, *KernelInvokeOperator.template_fields)
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **KernelInvokeOperator.template_fields_renderers,
    }
    custom_operator_name: str = "@task.kernel"
    # The payload is known only once the function ran: show the rendered one (not None) in the UI afterwards.
    overwrite_rtif_after_execution: bool = True

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if "payload" in kwargs:
            raise TypeError(
                "@task.kernel: payload is the decorated function's return value; do not pass payload= "
                "(return it from the function, or use KernelInvokeOperator)."
            )
        super().__init__(python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, **kwargs)

    def execute(self, context: Any) -> Any:
        """Call the function for the payload, then invoke and wait as :class:`KernelInvokeOperator` does."""
        self._set_payload(context)
        return super().execute(context)

    def execute_after_rate_limit(self, context: Any, event: Any = None) -> Any:
        """Resume after a 429 timer: the payload is the function's again (a resumed task is a fresh instance)."""
        self._set_payload(context)
        return super().execute_after_rate_limit(context, event)

    def _set_payload(self, context: Any) -> None:
        """Run the function with its (rendered) arguments and keep its checked return value.

        The return value is not rendered: it is data (often from upstream XComs or scraped pages), and rendering
        it would evaluate whatever Jinja it carries, connection secrets included, as ``@task`` never does.
        """
        context_merge(context, self.op_kwargs)
        kwargs = determine_kwargs(self.python_callable, self.op_args, context)
        payload = self.python_callable(*self.op_args, **kwargs)
        name = getattr(self.python_callable, "__name__", "the function")
        # Checked here so that a bad return value fails naming the function, before any request.
        encode_payload(payload, field=f"the return value of @task.kernel function {name}()")
        self.payload = payload


def kernel_task(
    python_callable: Callable[..., Any] | None = None,
    *,
    app_name: str,
    action_name: str,
    version: str = "latest",
    invoke_async: bool = True,
    async_timeout_seconds: int | None = None,
    wait_for_completion: bool = True,
    deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
    wait_mode: str = "stream",
    poll_interval: float = 5.0,
    timeout: float | timedelta | None = None,
    stream_logs: bool = True,
    cancel_on_kill: bool = True,
    reattach_on_retry: bool = True,
    reconcile_token: bool = False,
    validate_action: bool = False,
    fail_on_failure: bool = True,
    rate_limit_wait: float | None = None,
    live_view: bool | str = "read",
    track_usage: bool = True,
    max_browser_seconds: float | None = None,
    lineage_inputs: Sequence[Any] | None = None,
    end_in_triggerer: bool = True,
    kernel_conn_id: str = "kernel_default",
    **kwargs: Any,
) -> TaskDecorator:
    """``@task.kernel``: wrap a function returning the payload into a :class:`KernelInvokeOperator` task.

    Every keyword but ``python_callable`` and ``kwargs`` is the operator's parameter of the same name, with the same
    default and meaning (see :class:`KernelInvokeOperator`); ``payload`` is not one: the function returns it.

    :param python_callable: the function (``@task.kernel`` without parentheses fails: it needs ``app_name`` and
        ``action_name``).
    :param kwargs: ``BaseOperator``'s parameters (``task_id``, ``retries``, ``pool``...). ``multiple_outputs``
        defaults to False whatever the function's return annotation says: the annotation describes the payload,
        not the action's output.
    """
    kwargs.setdefault("multiple_outputs", False)
    return task_decorator_factory(
        python_callable=python_callable,
        decorated_operator_class=_KernelDecoratedOperator,
        app_name=app_name,
        action_name=action_name,
        version=version,
        invoke_async=invoke_async,
        async_timeout_seconds=async_timeout_seconds,
        wait_for_completion=wait_for_completion,
        deferrable=deferrable,
        wait_mode=wait_mode,
        poll_interval=poll_interval,
        timeout=timeout,
        stream_logs=stream_logs,
        cancel_on_kill=cancel_on_kill,
        reattach_on_retry=reattach_on_retry,
        reconcile_token=reconcile_token,
        validate_action=validate_action,
        fail_on_failure=fail_on_failure,
        rate_limit_wait=rate_limit_wait,
        live_view=live_view,
        track_usage=track_usage,
        max_browser_seconds=max_browser_seconds,
        end_in_triggerer=end_in_triggerer,
        lineage_inputs=lineage_inputs,
        kernel_conn_id=kernel_conn_id,
        **kwargs,
    )
