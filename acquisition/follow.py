"""A consumer's view of one run's documents: in seq order, once each, gaps healed.

MQTT at QoS1 can deliver a document twice (same ``id``) and a broker that crashes after
acknowledging can lose one. :class:`RunFollower` is the pure logic a consumer needs: feed it
every document received (:meth:`offer`) and every retained run state (:meth:`saw_last_seq`);
it hands back documents in seq order exactly once, and :meth:`replay_due` says which range to
ask the daemon to ``replay`` when a gap has lasted longer than ``grace_s``.
No I/O here; the caller owns the connection and the clock.
"""

from __future__ import annotations

from typing import Any

__all__ = ["RunFollower"]


class RunFollower:
    def __init__(self, *, next_seq: int = 1, grace_s: float = 0.5, retry_s: float = 2.0) -> None:
        self.next_seq = next_seq
        self.grace_s = grace_s
        self.retry_s = retry_s
        self.duplicates = 0
        self.foreign = 0
        self.replays_requested = 0
        self._buffer: dict[int, dict[str, Any]] = {}
        self._known_last = next_seq - 1
        self._gap_since: float | None = None
        self._last_request: float | None = None
        self.stopped = False

    @property
    def delivered_up_to(self) -> int:
        return self.next_seq - 1

    def offer(self, doc: dict[str, Any], now: float) -> list[dict[str, Any]]:
        """Take one received document; return those now deliverable, in order.

        Anything that is not a run document (no ``assay.event/1`` schema or no integer
        ``seq``) is ignored and counted in ``foreign``.
        """
        seq = doc.get("seq") if isinstance(doc, dict) else None
        if not isinstance(seq, int) or doc.get("schema") != "assay.event/1":
            self.foreign += 1
            return []
        if seq < self.next_seq or seq in self._buffer:
            self.duplicates += 1
            return []
        self._buffer[seq] = doc
        self._known_last = max(self._known_last, seq)
        out: list[dict[str, Any]] = []
        while self.next_seq in self._buffer:
            ready = self._buffer.pop(self.next_seq)
            out.append(ready)
            self.next_seq += 1
            if ready.get("kind") == "stop":
                self.stopped = True
        self._update_gap(now)
        return out

    def saw_last_seq(self, last_seq: int, now: float) -> None:
        """The retained run state says documents up to ``last_seq`` exist."""
        self._known_last = max(self._known_last, last_seq)
        self._update_gap(now)

    def _update_gap(self, now: float) -> None:
        if self._known_last >= self.next_seq:
            if self._gap_since is None:
                self._gap_since = now
        else:
            self._gap_since = None
            self._last_request = None

    def replay_requested(self, now: float) -> None:
        """The caller asked for a replay on its own (e.g. a history from seq 1): the next
        :meth:`replay_due` waits ``retry_s`` from ``now`` before asking again."""
        self._last_request = now
        self.replays_requested += 1

    def replay_due(self, now: float) -> tuple[int, int] | None:
        """The (from_seq, to_seq) to request now, or None while no replay is needed yet."""
        if self._gap_since is None or now - self._gap_since < self.grace_s:
            return None
        if self._last_request is not None and now - self._last_request < self.retry_s:
            return None
        self._last_request = now
        self.replays_requested += 1
        first_buffered = min(self._buffer) if self._buffer else self._known_last + 1
        return self.next_seq, first_buffered - 1
