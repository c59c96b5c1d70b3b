"""User data is data, never a template or an instruction: a corpus of hostile strings run through every path that
carries user data into Kernel and back (issue 24, "checks that catch each class").

Paths: the operator's payload as an XComArg and as ``{{ ti.xcom_pull(...) }}`` templates that resolve to the
hostile values (the XCom *value* must not be rendered again); ``@task.kernel`` return values; the browser options
of ``@task.kernel_browser`` (``start_url`` from XCom through its template); Kernel's outputs (the action echoes
everything back into XCom) and log lines (the action prints every value). Each value must reach Kernel byte-exact
(the emulator records the payload it received and echoes a browser's ``start_url``) or be refused before any
request with an error naming the field. The connection's API key is a canary: the corpus asks for it in every
template syntax, and it must appear nowhere (task logs, XCom, exceptions, what Kernel received).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from kernel_provider.client.text import LINE_LIMIT, safe_log_lines
from kernel_provider.operators.kernel import KernelInvokeOperator
from tests.airflow_helpers import (
    TASK_FAILURES,
    all_logs,
    make_dag,
    run_dag,
    states,
    task,
    xcom,
)
from tests.helpers import EVENTS, GATED_APP, Gate, conn_json, seen
from tests.kernel_browsers import skip_without_chromium

pytestmark = pytest.mark.usefixtures("airflow_db")

CANARY = f"kc_{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"
NEEDLES = {"canary": CANARY, "prefix": CANARY[:8], "suffix": CANARY[-8:]}
MEGABYTE = "M" * 1_000_000
#: name -> hostile value. Names are plain identifiers (they become payload keys and template subscripts).
CORPUS: dict[str, str] = {
    "jinja_canary": "{{ conn.kernel_default.password }}",
    "jinja_canary_var": "{{ conn['kernel_default'].password }}{{ var.value.kernel }}",
    "jinja_expr": "{{ 7 * 7 }} Hello {{ name }}!",
    "jinja_stmt": "{% for c in conn.kernel_default.password %}{{ c }}{% endfor %}",
    "jinja_comment": "{# hidden #}shown",
    "jinja_raw": "{% raw %}{{ x }}{% endraw %}",
    "jinja_set": "{% set k = conn.kernel_default.password %}{{ k }}",
    "jinja_macro": "{{ macros.ds_add('2024-01-01', 1) }} {{ ds }} {{ ti.xcom_pull(task_ids='src') }}",
    "jinja_half": "{{ unclosed {% if %} #}",
    "format_strings": "%s %(asctime)s {0} ${HOME} $(id) `id`",
    "nul": "before\x00after",
    "controls": "\x1b[31mred\x1b[0m \x1b]8;;https://evil.example\x07link\x1b]8;;\x07 \x1b[2J",
    "forged_line": "ok\rMarking task as SUCCESS\u2028INFO - done\u2029\x85",
    "rtl": "\u202egnp.exe \u2066isolate\u2069 \u200f",
    "invalid_utf8_escaped_text": "\\xff\\xfe\\udcff",
    "json_text": '{"a": 1, "b": [true, null]}',
    "non_bmp": "🙂 日本語 \U0010ffff",
    "crlf_tab": "a\r\nb\tc\n",
    "megabyte": MEGABYTE,
}
#: Lone surrogates (invalid UTF-8 read with ``surrogateescape``): no Unicode text, so nothing can carry them
#: unchanged (Airflow 3 itself cannot store them in XCom); the provider refuses them before any request.
SURROGATES: dict[str, str] = {
    "surrogate_lone": "x\ud800y",
    "surrogate_invalid_utf8": b"\xff\xfe\xc3(".decode("utf-8", "surrogateescape"),
}
#: start_url values: http(s) URLs carrying the same classes (a non-URL is refused before any request).
URLS: dict[str, str] = {
    "url_jinja": "http://127.0.0.1:9/{{ conn.kernel_default.password }}?q={% if 1 %}x{% endif %}#{# c #}",
    "url_controls": "http://127.0.0.1:9/p?\x1b[2J=\rMarking\u2028\u202e",
    "url_nul": "http://127.0.0.1:9/\x00nul",
    "url_megabyte": "http://127.0.0.1:9/?q=" + MEGABYTE,
    "not_a_url": "{{ conn.kernel_default.password }}",
}


@pytest.fixture
def canary_kernel(kernel_emulator_factory: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Any:
    """An emulator whose API key is the canary, serving the demo app and the ``gate`` app."""
    emulator = kernel_emulator_factory(token=CANARY, apps=[GATED_APP])
    monkeypatch.setenv("AIRFLOW_CONN_KERNEL_DEFAULT", conn_json(emulator.url, CANARY))
    emulator.gate = Gate(tmp_path, "hostile-gate")
    return emulator


def _canary_hits(sources: dict[str, str]) -> dict[tuple[str, str], int]:
    return {
        (source, name): text.count(needle)
        for source, text in sources.items()
        for name, needle in NEEDLES.items()
        if needle in text
    }


def _payload(invocation: dict[str, Any]) -> Any:
    return json.loads(invocation["payload"])


@pytest.mark.timeout(600)  # six tasks through dag.test() before the printing one: minutes on a loaded machine
def test_hostile_payloads_outputs_and_log_lines(
    canary_kernel: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    gate = canary_kernel.gate
    with make_dag("hostile_data") as dag:

        @task
        def src() -> dict[str, str]:
            return dict(CORPUS)

        @task.kernel(app_name="demo", action_name="echo")
        def decorated(values: dict[str, str]) -> dict[str, str]:
            return {"path": "decorated", **values}

        @task
        def to_print(values: dict[str, str]) -> dict[str, Any]:
            return gate.payload(say_after=list(values.values()), result={"path": "printed", **values})

        values = src()
        KernelInvokeOperator(task_id="xcomarg", app_name="demo", action_name="echo", payload=values)
        templated = KernelInvokeOperator(
            task_id="templated",
            app_name="demo",
            action_name="echo",
            payload={"path": "templated", **{k: f"{{{{ ti.xcom_pull(task_ids='src')['{k}'] }}}}" for k in CORPUS}},
        )
        values >> templated
        decorated(values)
        KernelInvokeOperator(
            task_id="printed", app_name="gate", action_name="wait", payload=to_print(values), poll_interval=0.1
        )
    joined = gate.open_when(seen(canary_kernel, EVENTS), "the wait to follow the printing invocation", timeout=540)
    run = run_dag(dag)
    joined()
    logs = all_logs(caplog, capfd)

    received = {f"{i['action_name']}/{_payload(i).get('path', '')}": i for i in canary_kernel.invocations()}
    assert _payload(received["echo/"]) == CORPUS and xcom(run, "xcomarg") == CORPUS
    assert _payload(received["echo/templated"]) == {"path": "templated", **CORPUS}, "not byte-exact at Kernel"
    assert xcom(run, "templated") == {"path": "templated", **CORPUS}, "Kernel's output changed on its way to XCom"
    assert xcom(run, "printed") == {"path": "printed", **CORPUS}

    # Kernel's log lines: each value printed shows in the task log escaped, capped, one [kernel ...] line each.
    printed_id = received["wait/"]["id"]
    kernel_lines = [line for line in logs.splitlines() if f"[kernel {printed_id}]" in line]
    for name, value in CORPUS.items():
        for line in safe_log_lines(value[: 64 * 1024 - 1]):  # the emulator caps a printed line at 64 KiB
            assert any(line in kernel_line for kernel_line in kernel_lines), f"{name}: line {line[:80]!r} not logged"
    assert max(len(line) for line in kernel_lines) < LINE_LIMIT + 300

    exceptions = "\n".join(TASK_FAILURES)
    db_xcoms = json.dumps([xcom(run, t) for t in ("xcomarg", "templated", "decorated", "printed")])
    payloads = json.dumps([inv.get("payload") for inv in canary_kernel.invocations()])
    sources = {"task logs": logs, "XCom": db_xcoms, "exceptions": exceptions, "payloads at Kernel": payloads}
    assert _canary_hits(sources) == {}

    # @task.kernel: the return value is the payload as it is, never a template
    assert TASK_FAILURES == [], TASK_FAILURES
    assert _payload(received["echo/decorated"]) == {"path": "decorated", **CORPUS}
    assert xcom(run, "decorated") == {"path": "decorated", **CORPUS}
    assert states(run) == dict.fromkeys(("src", "xcomarg", "templated", "decorated", "to_print", "printed"), "success")


def test_lone_surrogates_are_refused_before_any_request(
    canary_kernel: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with make_dag("hostile_surrogates") as dag:
        KernelInvokeOperator(task_id="literal", app_name="demo", action_name="echo", payload=dict(SURROGATES))

        @task.kernel(app_name="demo", action_name="echo")
        def decorated() -> dict[str, Any]:
            return {"nested": [dict(SURROGATES)]}

        decorated()
    assert states(run_dag(dag)) == {"literal": "failed", "decorated": "failed"}
    assert canary_kernel.requests(path="/invocations", method="POST") == []
    # A literal fails in Airflow itself (rendering it, before execute: the Task SDK cannot encode it either); the
    # decorator's return value reaches the provider, which names where the surrogate is.
    assert "decorated()['nested'][0]['surrogate_lone']: holds a lone surrogate" in all_logs(caplog, capfd)


@pytest.mark.chromium
@skip_without_chromium
def test_hostile_start_urls_arrive_exact_or_are_refused_before_any_request(
    canary_kernel: Any, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    with make_dag("hostile_urls") as dag:

        @task
        def urls() -> dict[str, str]:
            return dict(URLS)

        source = urls()
        for name in URLS:

            @task.kernel_browser(task_id=name, start_url=f"{{{{ ti.xcom_pull(task_ids='urls')['{name}'] }}}}")
            def browse(kernel_browser: Any) -> str:
                return str(kernel_browser.start_url)

            source >> browse()
    run = run_dag(dag)
    logs = all_logs(caplog, capfd)
    result = states(run)
    creates = canary_kernel.requests(path="/browsers", method="POST")
    for name, value in URLS.items():
        if result[name] == "success":
            assert xcom(run, name) == value, f"{name}: Kernel got another start_url"
    refused = [name for name, state in result.items() if name in URLS and state != "success"]
    assert "not_a_url" in refused
    assert "KernelInputError: start_url" in logs
    if TASK_FAILURES:  # Airflow 3 (2.11's dag.test() only logs them): each refusal names the field, briefly
        naming = [f for f in TASK_FAILURES if f.startswith("KernelInputError: start_url")]
        assert len(naming) == len(refused), f"a refusal that does not name start_url: {TASK_FAILURES}"
        assert all(len(f) < 1000 for f in naming), "an error echoes a huge value"
    assert len(creates) == len(URLS) - len(refused), "a refused start_url reached Kernel"
    assert _canary_hits({"task logs": logs, "exceptions": "\n".join(TASK_FAILURES)}) == {}
