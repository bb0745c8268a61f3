"""The whole agent in this process, on its own event loop in a background thread, for tests that send it many
requests from synchronous code (hypothesis tests) and need every layer behind the receivers: the sampler's
wire scanner, span metrics, the remote-write exporter's translation and its shape path.

    with AgentInThread(tmp_path) as agent:
        status, body = agent.post_http("/v1/traces", body, {"Content-Type": "application/x-protobuf"})
        code, details = agent.call_grpc("traces", body)
        status, body = agent.post_gateway(body, headers)
        assert agent.errors() == []      # nothing logged at ERROR or above since start

The traces pipeline writes to the file exporter; the metrics pipeline (span metrics included) and the
gateway to a remote-write exporter whose store is the scripted receiver of tests/vm_receiver.py. All three
receivers listen on ports the OS picks. Every request has a timeout: a receiver that does not answer fails
the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import grpc

from agent.config import load_text
from agent.service import Agent
from tests.vm_receiver import VmReceiver

T = TypeVar("T")
TIMEOUT = 10.0
GRPC_METHODS = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "metrics": "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export",
}


_FRAMEWORKS = ("aiohttp", "asyncio", "grpc")


class _Errors(logging.Handler):
    """Unexpected exceptions: records at ERROR with a traceback, or from the frameworks (aiohttp's "Error
    handling request", asyncio's "Task exception was never retrieved"). An ERROR that reports an outcome
    (data too old to send) is not one."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info or record.name.split(".")[0] in _FRAMEWORKS:
            self.records.append(record)


def _config(state_dir: Path, store_url: str) -> str:
    return f"""
state_dir: {state_dir}
receivers:
  otlp:
    grpc: {{endpoint: 127.0.0.1:0, max_message_size: 1MiB}}
    http: {{endpoint: 127.0.0.1:0, max_body_size: 1MiB}}
  remote_write: {{endpoint: 127.0.0.1:0, max_body_size: 1MiB}}
sampling: {{decision_wait: 300ms, root_delay: 100ms}}
span_metrics: {{flush_interval: 1s, dimensions: [http.route]}}
exporters:
  file: {{}}
  remote_write:
    - {{name: store, url: "{store_url}", protocol: rw1, queue: {{max_disk: 0}},
        batch: {{flush_interval: 200ms}}}}
pipelines:
  traces: {{exporters: [file]}}
  metrics: {{exporters: [store], span_metrics: true}}
telemetry: {{enabled: false}}
shutdown_timeout: 5s
"""


class AgentInThread:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="agent-loop", daemon=True)
        self._errors = _Errors()
        self.agent: Agent | None = None
        self.store: VmReceiver | None = None
        self._channel: grpc.Channel | None = None

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=60)

    def __enter__(self) -> AgentInThread:
        self._thread.start()
        logging.getLogger().addHandler(self._errors)

        async def start() -> None:
            self.store = VmReceiver()
            await self.store.start()
            config = load_text(_config(self.workdir / "state", self.store.remote_write_url))
            self.agent = Agent(config)
            await self.agent.start()

        self._run(start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._channel is not None:
                self._channel.close()

            async def stop() -> None:
                if self.agent is not None:
                    await self.agent.shutdown()
                if self.store is not None:
                    await self.store.stop()

            self._run(stop())
        finally:
            logging.getLogger().removeHandler(self._errors)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)

    # -- what tests read ------------------------------------------------------------------------------------

    def errors(self) -> list[str]:
        """Every unexpected exception logged since start, with its traceback."""
        formatter = logging.Formatter("%(name)s: %(message)s")
        return [formatter.format(r) for r in self._errors.records]

    def call(self, function: Callable[[], T]) -> T:
        """`function()` run on the agent's event loop (e.g. reading its own metrics, as a scrape would)."""
        async def run() -> T:
            return function()

        return self._run(run())

    @property
    def alive(self) -> bool:
        return self._thread.is_alive() and self.loop.is_running()

    # -- clients ---------------------------------------------------------------------------------------------

    def _post(self, port: int, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        try:
            connection.request("POST", path, body=body, headers=dict(headers))
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def post_http(self, path: str, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        assert self.agent is not None and self.agent.http is not None
        return self._post(self.agent.http.bound_port, path, body, headers)

    def post_gateway(self, body: bytes, headers: Mapping[str, str]) -> tuple[int, bytes]:
        assert self.agent is not None and self.agent.gateway is not None
        return self._post(self.agent.gateway.bound_port, "/api/v1/write", body, headers)

    def call_grpc(self, signal: str, body: bytes) -> tuple[grpc.StatusCode, str]:
        """(status code, details) of one Export call with `body` as the serialized request."""
        assert self.agent is not None and self.agent.grpc is not None
        if self._channel is None:
            self._channel = grpc.insecure_channel(f"127.0.0.1:{self.agent.grpc.bound_port}")
        call = self._channel.unary_unary(GRPC_METHODS[signal], request_serializer=None, response_deserializer=None)
        try:
            call(body, timeout=TIMEOUT)
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or ""
        return grpc.StatusCode.OK, ""
