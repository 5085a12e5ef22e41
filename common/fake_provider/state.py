"""Behaviours per API key and request records of the fake provider."""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass
from typing import Any

from common.fake_provider.catalogue import ERROR_CASES

ANSWER = "answer"
HANG = "hang"
#: Every valid behaviour kind: a normal answer, a request that never ends, or an error case.
KINDS: tuple[str, ...] = (ANSWER, HANG, *ERROR_CASES)


@dataclass(frozen=True)
class Behaviour:
    """How the fake responds to requests made with one key.

    `kind` is "answer", "hang" or an error case name. `latency_ms` delays every response.
    With `times` set, the behaviour serves that many requests and then hands over to `then`,
    or to a plain answer when `then` is None.

    Model-list requests return only the errors that reject the key, and do not count against
    `times`, because real providers serve them without spending quota. With `model_lists`,
    they return every error case and count against `times` like other requests, so that key
    revalidation can be tested against a rate-limited or failing model list.
    """

    kind: str = ANSWER
    latency_ms: int = 0
    times: int | None = None
    then: Behaviour | None = None
    model_lists: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"unknown behaviour kind {self.kind!r}. Valid kinds: {', '.join(KINDS)}"
            )
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms}")
        if self.times is not None and self.times < 0:
            raise ValueError(f"times must be >= 0 or None, got {self.times}")

    @classmethod
    def from_json(cls, data: Any) -> Behaviour:
        """Build a behaviour from a kind name or an object with the dataclass fields.

        Raises TypeError on wrong types, and ValueError on unknown fields or an unknown kind.
        """
        if isinstance(data, str):
            return cls(kind=data)
        if not isinstance(data, dict):
            raise TypeError(f"a behaviour must be a JSON object or a kind name, got {data!r}")
        unknown = set(data) - {"kind", "latency_ms", "times", "then", "model_lists"}
        if unknown:
            raise ValueError(f"unknown behaviour fields: {', '.join(sorted(unknown))}")
        kind = data.get("kind", ANSWER)
        latency_ms = data.get("latency_ms", 0)
        times = data.get("times")
        if not isinstance(kind, str):
            raise TypeError(f"kind must be a string, got {kind!r}")
        if not _is_int(latency_ms):
            raise TypeError(f"latency_ms must be an integer, got {latency_ms!r}")
        if times is not None and not _is_int(times):
            raise TypeError(f"times must be an integer or null, got {times!r}")
        model_lists = data.get("model_lists", False)
        if not isinstance(model_lists, bool):
            raise TypeError(f"model_lists must be a boolean, got {model_lists!r}")
        then = data.get("then")
        return cls(
            kind=kind,
            latency_ms=latency_ms,
            times=times,
            then=None if then is None else cls.from_json(then),
            model_lists=model_lists,
        )

    def to_json(self) -> dict[str, Any]:
        """Return the behaviour as a JSON-ready dict that from_json accepts."""
        return {
            "kind": self.kind,
            "latency_ms": self.latency_ms,
            "times": self.times,
            "then": None if self.then is None else self.then.to_json(),
            "model_lists": self.model_lists,
        }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def to_behaviour(behaviour: Behaviour | str) -> Behaviour:
    """Return `behaviour` itself, or a behaviour of that kind for a kind name."""
    return behaviour if isinstance(behaviour, Behaviour) else Behaviour(kind=behaviour)


@dataclass
class RecordedRequest:
    """One provider request that reached the fake.

    `key` is the secret the client sent, or None when the request had no key. `status` stays
    None while the request runs and when the client disconnected before any response.
    """

    key: str | None
    method: str
    path: str
    status: int | None
    received_at: float


@dataclass
class _Slot:
    """The behaviour in force for one key and how many more requests it serves."""

    behaviour: Behaviour
    remaining: int | None

    @classmethod
    def start(cls, behaviour: Behaviour) -> _Slot:
        return cls(behaviour, behaviour.times)

    def current(self) -> Behaviour:
        # A finished behaviour hands over to `then`. The chain is finite and ends in a
        # behaviour without `times`, so the loop ends.
        while self.remaining is not None and self.remaining <= 0:
            successor = self.behaviour.then or Behaviour()
            self.behaviour = successor
            self.remaining = successor.times
        return self.behaviour

    def take(self) -> Behaviour:
        behaviour = self.current()
        if self.remaining is not None:
            self.remaining -= 1
        return behaviour


class FakeProvider:
    """Behaviours per key, request records and connection counts, safe to use from any thread.

    A key without a behaviour gets the default behaviour if one is set, and otherwise the
    provider's invalid-key answer.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._default: _Slot | None = None
        self._records: list[RecordedRequest] = []
        self._connections: set[tuple[str, int]] = set()

    def set_behaviour(self, key: str, behaviour: Behaviour | str) -> None:
        """Set the behaviour for requests made with `key`, restarting its `times` count.

        Raises ValueError for an unknown kind name.
        """
        slot = _Slot.start(to_behaviour(behaviour))
        with self._lock:
            self._slots[key] = slot

    def set_default(self, behaviour: Behaviour | str | None) -> None:
        """Set the behaviour for keys without their own behaviour, or remove it with None."""
        slot = None if behaviour is None else _Slot.start(to_behaviour(behaviour))
        with self._lock:
            self._default = slot

    def take_behaviour(self, key: str, *, consume: bool = True) -> Behaviour | None:
        """Return the behaviour for the next request made with `key`.

        The request counts against the behaviour's `times` with `consume`, and also without it
        when the behaviour sets `model_lists`. Returns None when neither the key nor the
        default has a behaviour.
        """
        with self._lock:
            slot = self._slots.get(key, self._default)
            if slot is None:
                return None
            if consume or slot.current().model_lists:
                return slot.take()
            return slot.current()

    def record_request(
        self, key: str | None, method: str, path: str, received_at: float
    ) -> RecordedRequest:
        """Store a new request record with no status yet, and return it."""
        record = RecordedRequest(key, method, path, None, received_at)
        with self._lock:
            self._records.append(record)
        return record

    def set_status(self, record: RecordedRequest, status: int) -> None:
        """Store the status code sent for a recorded request."""
        with self._lock:
            record.status = status

    def record_connection(self, client: tuple[str, int] | None) -> None:
        """Count the client's TCP connection once, identified by its address and port."""
        if client is None:
            return
        with self._lock:
            self._connections.add((client[0], client[1]))

    @property
    def connections_opened(self) -> int:
        """Number of distinct client connections that sent provider requests since reset().

        A connection is its client address and port, so a port that the client's OS reuses
        for a new connection after the old one closed is counted once.
        """
        with self._lock:
            return len(self._connections)

    def request_count(self, key: str | None = None, path_prefix: str | None = None) -> int:
        """Count recorded requests, optionally only those with `key` and under `path_prefix`."""
        with self._lock:
            return sum(
                1
                for record in self._records
                if (key is None or record.key == key)
                and (path_prefix is None or record.path.startswith(path_prefix))
            )

    def requests(self) -> list[RecordedRequest]:
        """Return copies of all request records, oldest first."""
        with self._lock:
            return [dataclasses.replace(record) for record in self._records]

    def stats(self) -> dict[str, Any]:
        """Return request counts by key (`""` for requests without a key) and totals."""
        with self._lock:
            by_key: dict[str, int] = {}
            for record in self._records:
                name = record.key or ""
                by_key[name] = by_key.get(name, 0) + 1
            return {
                "requests_by_key": by_key,
                "requests_total": len(self._records),
                "connections_opened": len(self._connections),
            }

    def reset(self) -> None:
        """Remove every behaviour, the default, the request records and the connection count."""
        with self._lock:
            self._slots.clear()
            self._default = None
            self._records.clear()
            self._connections.clear()
