"""Multi round-trip requests (2026-07-28) for the namespace endpoint's modern clients.

A 2026-07-28 client has no back-channel: when an upstream asks something mid-call (a 2025
server pushing `elicitation/create`, or a 2026 server answering `input_required`, which the
SDK client turns into the same question), the gateway cannot push it down. Instead the call
keeps running, held open in this process, and its question goes back as an `input_required`
result. The client answers and retries with `inputResponses` and our `requestState`; the answer
resumes the held call, which either finishes (the retry gets the result) or asks again.

`requestState` is sealed by the vault (AES-GCM), bound to the namespace and the caller, and
names the held call, the tool (or prompt, or resource) and an expiry: a client cannot forge,
replay elsewhere or resume another caller's call. A held call nobody resumes is cancelled after
`HOLD_SECONDS`. Held calls live in one process: a retry must reach the same gateway instance.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.abc import TaskGroup
from mcp.shared.exceptions import MCPError

from proxy import wire
from proxy.auth.policy import Principal
from proxy.upstream import relay
from proxy.vault import Vault, VaultError

HOLD_SECONDS = 300.0  # how long a question waits for its answer
MAX_HELD = 1000  # held calls at once; beyond it new questions fail instead of piling up
MAX_HELD_PER_CALLER = 20  # so one caller cannot take every place
_STATE_FIELD = "mrtr"


@dataclass
class _Question:
    key: str
    method: str
    params: dict[str, Any]
    answer: anyio.Event = field(default_factory=anyio.Event)
    result: dict[str, Any] | None = None
    error: MCPError | None = None


@dataclass
class _Held:
    """One call running on the caller's behalf while the caller answers its questions."""

    id: str
    capabilities: dict[str, Any]
    owner: str = ""
    changed: anyio.Event = field(default_factory=anyio.Event)
    waiting: dict[str, _Question] = field(default_factory=dict)
    asked: list[_Question] = field(default_factory=list)  # not yet handed to the client
    outcome: dict[str, Any] | None = None
    failure: BaseException | None = None
    done: bool = False
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    expires: float = 0.0
    counter: int = 0

    def wake(self) -> None:
        self.changed.set()
        self.changed = anyio.Event()


class _HeldCaller:
    """The caller as the upstream sees it while held: each question waits for the retry."""

    pushes = False

    def __init__(self, held: _Held):
        self._held = held

    def can(self, capability: str) -> bool:
        return capability in self._held.capabilities

    async def ask(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        held = self._held
        held.counter += 1
        question = _Question(key=f"q{held.counter}", method=method, params=params)
        held.waiting[question.key] = question
        held.asked.append(question)
        held.wake()
        try:
            with anyio.fail_after(HOLD_SECONDS):
                await question.answer.wait()
        except TimeoutError:
            held.waiting.pop(question.key, None)
            raise MCPError(wire.INTERNAL_ERROR, f"the client did not answer {method} in time") from None
        if question.error is not None:
            raise question.error
        assert question.result is not None
        return question.result

    async def notify(self, method: str, params: dict[str, Any]) -> None:
        return None  # log messages of a held call have no stream to ride


class HeldCalls:
    """Every call held open for a modern client, and their sealed states."""

    def __init__(self, task_group: TaskGroup, vault: Vault):
        self._tg = task_group
        self._vault = vault
        self._held: dict[str, _Held] = {}

    async def run(
        self,
        namespace: str,
        principal: Principal,
        target: str,
        capabilities: dict[str, Any],
        params: dict[str, Any],
        start: Callable[[], Awaitable[dict[str, Any]]],
    ) -> dict[str, Any]:
        """The result of `start()` for a modern client, or an `input_required` result; on a retry
        (`requestState` in `params`) the answers resume the held call instead."""
        state = params.get("requestState")
        if state is None:
            answers = params.get("inputResponses")
            owner = f"{principal.kind}:{principal.id}"
            held = self._start(capabilities, start, answers if isinstance(answers, dict) else None, owner)
            return await self._next(namespace, principal, target, held)
        opened = self._open(namespace, principal, target, state)
        if "up" in opened:
            # A 2026 upstream's own round trip: its state and the answers go back to it unchanged.
            responses = params.get("inputResponses")
            answer = relay.Forwarded(
                responses if isinstance(responses, dict) else None, opened["up"] or None, capabilities
            )
            token = relay.forwarded.set(answer)
            try:
                outcome = await start()
            finally:
                relay.forwarded.reset(token)
            return self.shaped(namespace, principal, target, outcome)
        held = self._resume(opened, params.get("inputResponses"))
        return await self._next(namespace, principal, target, held)

    def _seal(self, namespace: str, principal: Principal, target: str, **fields: str) -> str:
        return self._vault.seal(
            {**fields, "target": target, "exp": str(time.time() + HOLD_SECONDS)},
            namespace=namespace,
            connection_id=principal.id,
            field=_STATE_FIELD,
        )

    def _open(self, namespace: str, principal: Principal, target: str, state: Any) -> dict[str, str]:
        expired = MCPError(wire.INVALID_PARAMS, "requestState is unknown or expired: call the tool again")
        if not isinstance(state, str):
            raise expired
        try:
            opened = self._vault.open(
                state, namespace=namespace, connection_id=principal.id, field=_STATE_FIELD
            )
        except VaultError as exc:
            raise expired from exc
        if opened.get("target") != target or float(opened.get("exp", "0")) < time.time():
            raise expired
        return opened

    def shaped(
        self, namespace: str, principal: Principal, target: str, outcome: dict[str, Any]
    ) -> dict[str, Any]:
        """A result for the caller: a 2026 upstream's `input_required` keeps its questions (and
        their keys) and carries its state sealed inside ours."""
        if outcome.get("resultType") != "input_required":
            return outcome
        upstream_state = outcome.get("requestState")
        sealed = self._seal(
            namespace, principal, target, up=upstream_state if isinstance(upstream_state, str) else ""
        )
        return {**outcome, "requestState": sealed}

    def _start(
        self,
        capabilities: dict[str, Any],
        start: Callable[[], Awaitable[dict[str, Any]]],
        answers: dict[str, Any] | None = None,
        owner: str = "",
    ) -> _Held:
        self._expire()
        mine = sum(h.owner == owner for h in self._held.values())
        if len(self._held) >= MAX_HELD or mine >= MAX_HELD_PER_CALLER:
            raise MCPError(wire.INTERNAL_ERROR, "too many calls are waiting for their clients; retry later")
        held = _Held(id=secrets.token_urlsafe(18), capabilities=capabilities, owner=owner)
        held.expires = time.monotonic() + HOLD_SECONDS
        self._held[held.id] = held

        async def work() -> None:
            token = relay.caller.set(_HeldCaller(held))
            # A 2026 upstream asks the client itself, for what the client declared.
            passing = relay.forwarded.set(relay.Forwarded(answers, capabilities=held.capabilities))
            try:
                with held.scope:
                    held.outcome = await start()
            except BaseException as exc:  # noqa: BLE001 - handed to whoever waits for the call
                held.failure = exc
                if isinstance(exc, anyio.get_cancelled_exc_class()) and not held.scope.cancel_called:
                    raise
            finally:
                relay.forwarded.reset(passing)
                relay.caller.reset(token)
                held.done = True
                held.wake()

        self._tg.start_soon(work)
        return held

    def _resume(self, opened: dict[str, str], responses: Any) -> _Held:
        held = self._held.get(opened.get("id", ""))
        if held is None:
            raise MCPError(wire.INVALID_PARAMS, "requestState is unknown or expired: call the tool again")
        answers = responses if isinstance(responses, dict) else {}
        for key, question in list(held.waiting.items()):
            if key not in answers:
                continue
            answer = answers[key]
            if isinstance(answer, dict) and "error" in answer and isinstance(answer["error"], dict):
                error = answer["error"]
                code = error.get("code")
                if not isinstance(code, int) or isinstance(code, bool):
                    code = wire.INTERNAL_ERROR
                question.error = MCPError(code, str(error.get("message", ""))[:1000])
            elif isinstance(answer, dict):
                question.result = answer
            else:
                question.error = MCPError(wire.INVALID_PARAMS, f"the answer to {key} is not an object")
            del held.waiting[key]
            question.answer.set()
        held.expires = time.monotonic() + HOLD_SECONDS
        return held

    async def _next(self, namespace: str, principal: Principal, target: str, held: _Held) -> dict[str, Any]:
        """Wait until the held call finishes or asks something the client has not seen."""
        while not held.done and not held.asked:
            await held.changed.wait()
        if held.done:
            self._held.pop(held.id, None)
            if held.failure is not None:
                raise held.failure
            assert held.outcome is not None
            return self.shaped(namespace, principal, target, held.outcome)
        questions, held.asked = held.asked, []
        sealed = self._seal(namespace, principal, target, id=held.id)
        return {
            "resultType": "input_required",
            "inputRequests": {q.key: {"method": q.method, "params": q.params} for q in questions},
            "requestState": sealed,
        }

    def _expire(self) -> None:
        """Forget calls whose client stopped answering (or never came back for the result); a
        call still working is left to finish."""
        now = time.monotonic()
        for held in [h for h in self._held.values() if h.expires < now and (h.done or h.waiting)]:
            self._held.pop(held.id, None)
            held.scope.cancel()


def modern_capabilities(meta: Any) -> dict[str, Any]:
    """The client capabilities a 2026-07-28 request declares in its `_meta`."""
    if isinstance(meta, dict):
        caps = meta.get(wire.META_CAPABILITIES)
        if isinstance(caps, dict):
            return caps
    return {}
