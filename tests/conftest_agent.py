"""Pytest plugin for end-to-end tests: the agent as a subprocess, an OTLP sink, and the Node client.

Load it from tests/conftest.py with `pytest_plugins = ["tests.conftest_agent"]`.

Fixtures:
- `otlp_sink`: a started `OtlpSink`, stopped after the test.
- `start_agent(**kwargs)`: starts an `AgentProcess` (same keyword arguments) in a fresh temp dir and waits
  until it is ready. After the test every agent it started gets SIGTERM, and the test errors if one does
  not exit with status 0. When a test fails, each agent's log is attached to the report.
- `node_client`: runs tests/node/send-spans.mjs; fails, saying how to install it, when Node or its
  packages are missing.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.agent_process import REPO_ROOT, AgentFailed, AgentProcess
from tests.otlp_sink import OtlpSink

NODE_DIR = REPO_ROOT / "tests" / "node"
NODE_INSTALL_HINT = "install it with: tests/peers/install-node.sh (needs Node.js >= 18 and npm)"
_AGENTS_ATTR = "_headwater_agents"


@pytest.fixture
def otlp_sink() -> Iterator[OtlpSink]:
    with OtlpSink() as sink:
        yield sink


@pytest.fixture
def start_agent(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., AgentProcess]]:
    agents: list[AgentProcess] = []
    setattr(request.node, _AGENTS_ATTR, agents)

    def start(**kwargs: Any) -> AgentProcess:
        agent = AgentProcess(tmp_path_factory.mktemp("agent"), **kwargs)
        agents.append(agent)
        agent.start()
        return agent

    yield start

    problems = []
    for agent in reversed(agents):
        try:
            agent.stop_cleanly()
        except AgentFailed as exc:
            problems.append(str(exc))
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for number, agent in enumerate(getattr(item, _AGENTS_ATTR, []), start=1):
            report.sections.append((f"agent {number} log ({agent.log_path})", agent.log_text() or "(empty)"))


class NodeClient:
    """tests/node/send-spans.mjs: the OpenTelemetry Node SDK exporting over OTLP/HTTP JSON."""

    def __init__(self, node: str) -> None:
        self.node = node

    def send_spans(self, url: str, count: int, name_prefix: str = "node-span", timeout: float = 60) -> list[dict[str, Any]]:
        """Send `count` spans to `url` (base or full traces URL); return what the script reports it sent."""
        result = subprocess.run(
            [self.node, str(NODE_DIR / "send-spans.mjs"), url, str(count), name_prefix],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")},
        )
        if result.returncode != 0:
            raise AssertionError(f"send-spans.mjs exited with status {result.returncode}:\n{result.stderr}")
        return json.loads(result.stdout)


@pytest.fixture(scope="session")
def node_client() -> NodeClient:
    node = shutil.which("node")
    if node is None:
        pytest.fail(f"Node.js is not on PATH; {NODE_INSTALL_HINT}", pytrace=False)
    missing = [
        name
        for name in json.loads((NODE_DIR / "package.json").read_text(encoding="utf-8"))["dependencies"]
        if not (NODE_DIR / "node_modules" / name / "package.json").is_file()
    ]
    if missing:
        pytest.fail(f"the Node OpenTelemetry packages are missing ({', '.join(missing)}); {NODE_INSTALL_HINT}", pytrace=False)
    return NodeClient(node)
