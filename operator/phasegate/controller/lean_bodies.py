"""Bodies kept lean, and our own status writes not processed twice.

kopf keeps the latest body of every object a daemon runs for (each strategy's loop), and
copies and compares bodies on every event. Two things are done to each watch event before
kopf sees it:

- `metadata.managedFields` are dropped. They were some 40% of a strategy's body in memory
  (35 of 80 KiB for a strategy that climbed the ladder), and nothing in the operator or in
  kopf reads them. The apiserver still has them: `kubectl get -o yaml --show-managed-fields`.
- An event that is our own status write echoed back (`own_echo` says so: the strategy's loop
  wrote exactly that resourceVersion) only replaces the body kopf keeps, without its status
  (STATUS_ELIDED in its place: the loop's memo holds that status, so kopf keeps no second
  copy; a pass whose memo cannot vouch for such a body reads it fresh, and Memo.load refuses
  it), and goes no further. Such an event
  differs from the one before it by our status alone (the write was conditional on the
  resourceVersion it replaced), so kopf has nothing to do for it: no index covers
  strategies, the diff base leaves status out, daemons already run, and our event handler
  ignores its own writes. Every other event, a foreign status write included, takes kopf's
  whole path; so does an echo while kopf has a patch of its own left to retry (its finalizer,
  whose JSON patch is conditional on the resourceVersion and loses the race with our first
  write): kopf retries it only on an event it processes.
- A strategy this replica does not act on (a shard another replica holds, or every strategy
  while this one stands by for the leader) is kept *elided*: its metadata only, spec and
  status dropped, and the key ELIDED in their place: a replica does not keep the spec and
  status of what it does not act on. Nothing reads an elided body as a strategy: the loop that starts acting
  on it reads it fresh first (handlers.readable), and Memo.load refuses one, so an elided
  body can never pass for a strategy without a status (one that would start the ladder
  over). kopf needs only the metadata of such a body (finalizers, deletion), and we
  register no kopf change handler that would diff its spec.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Optional

from phasegate.api.contract import KIND

from . import telemetry

_MARK = "_phasegate_lean"
# Whether an event is our own write echoed back (handlers.own_echo).
OwnEcho = Callable[[dict[str, Any]], bool]
_own_echo: Optional[OwnEcho] = None
# Whether this replica stands by for a strategy (namespace, name): its bodies are then elided.
StandingBy = Callable[[str, str], bool]
_standing_by: Optional[StandingBy] = None
ELIDED = "phasegateElided"  # top-level key of an elided body; its value is the body's resourceVersion
# In place of the status of a body that is our own write echoed back: the loop's memo holds it.
STATUS_ELIDED = "phasegateStatusElided"


def elided(body: Any) -> bool:
    return isinstance(body, Mapping) and ELIDED in body


def elide(obj: dict[str, Any]) -> None:
    obj.pop("spec", None)
    obj.pop("status", None)
    obj[ELIDED] = (obj.get("metadata") or {}).get("resourceVersion") or ""


def elide_if_standing_by(raw_event: Any) -> bool:
    """Elide a strategy's body when this replica stands by for it; whether it was."""
    obj = raw_event.get("object") if isinstance(raw_event, dict) else None
    if _standing_by is None or not isinstance(obj, dict) or obj.get("kind") != KIND:
        return False
    meta = obj.get("metadata") or {}
    if not _standing_by(meta.get("namespace") or "", meta.get("name") or ""):
        return False
    elide(obj)
    telemetry.ELIDED_BODIES.inc()
    return True


def strip(raw_event: Any) -> None:
    obj = raw_event.get("object") if isinstance(raw_event, dict) else None
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if isinstance(meta, dict):
        meta.pop("managedFields", None)


def only_status_moved(before: Any, after: dict[str, Any]) -> bool:
    """Whether `after` is `before` with another status and resourceVersion, nothing else."""
    moving = {"status", STATUS_ELIDED}
    if not isinstance(before, dict) or before.keys() - moving != after.keys() - moving:
        return False
    for key, value in after.items():
        if key == "metadata":
            old = before.get("metadata")
            if not isinstance(old, dict) or not isinstance(value, dict) or old.keys() != value.keys():
                return False
            if any(v != old[k] for k, v in value.items() if k != "resourceVersion"):
                return False
        elif key != "status" and before.get(key) != value:
            return False
    return True


async def absorb(raw_event: Any, kwargs: dict[str, Any]) -> bool:
    """Whether the event was our own write echoed back, now applied to the body kopf keeps."""
    if _own_echo is None or not isinstance(raw_event, dict) or raw_event.get("type") != "MODIFIED":
        return False
    obj = raw_event.get("object")
    memories = kwargs.get("memories")
    if not isinstance(obj, dict) or memories is None:
        return False
    if not _own_echo(obj):
        return False
    memory = await memories.recall(obj, memobase=kwargs.get("memobase"))
    if getattr(memory, "remaining_patch", None):
        # kopf has a patch of its own to retry (its finalizer, JSON-patched against the
        # resourceVersion it had seen, which our write raced): it retries on the next event it
        # processes. Absorbed, our echoes left a fifth of the strategies of a set-up without
        # kopf's finalizer until someone else wrote, and each such write then retried it.
        return False
    live = getattr(getattr(memory, "daemons_memory", None), "live_fresh_body", None)
    if live is None or not hasattr(live, "_replace_with"):
        return False  # no daemon keeps this body (or kopf changed): kopf's own path
    if not only_status_moved(getattr(live, "_src", None), obj):
        return False  # kopf has not seen what the write was based on: its own path
    obj.pop("status", None)
    obj[STATUS_ELIDED] = obj["metadata"]["resourceVersion"]
    live._replace_with(obj)
    telemetry.OWN_ECHOES.inc()
    return True


def install(own_echo: Optional[OwnEcho] = None, standing_by: Optional[StandingBy] = None) -> bool:
    """Wrap kopf's event processor; kopf looks it up when the operator starts (running.py
    binds it with functools.partial then), so this runs before `kopf.operator()`. False when
    this kopf has no such processor (its internals moved): the bodies are then kept whole
    and every echo is processed, which costs memory and CPU, not correctness."""
    global _own_echo, _standing_by
    try:
        from kopf._core.reactor import processing
    except ImportError:
        return False
    original = getattr(processing, "process_resource_event", None)
    if original is None:
        return False
    _own_echo, _standing_by = own_echo, standing_by
    if getattr(original, _MARK, False):
        return True

    async def process_resource_event(*args: Any, raw_event: Any, **kwargs: Any) -> Any:
        strip(raw_event)
        if not elide_if_standing_by(raw_event) and await absorb(raw_event, kwargs):
            return None  # as kopf's own processor answers when it patched nothing
        return await original(*args, raw_event=raw_event, **kwargs)

    setattr(process_resource_event, _MARK, True)
    processing.process_resource_event = process_resource_event
    return True
