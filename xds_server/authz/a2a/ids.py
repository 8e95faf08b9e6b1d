"""Where A2A messages carry task and context ids, in both generations (pure functions).

An agent chooses these ids; the gateway shows each caller sealed ones
(authz/sealing.py) and puts the agent's own back in the caller's requests
(authz/a2a/exchange.py). Context ids are sealed like task ids: a caller who
could name another caller's context could join its conversation.

Requests (JSON-RPC params):
- sending (`message/send|stream`, `SendMessage`, `SendStreamingMessage`):
  `params.message.taskId`, `.contextId`, `.referenceTaskIds[]`; 1.0 also
  `params.configuration.taskPushNotificationConfig.taskId`;
- `params.id` of the methods naming a task by it (core/a2a.py
  TASK_ID_METHODS), `params.taskId` of the push-notification config ones.

Answers (a JSON-RPC result, or an SSE event's):
- a Task (0.3: `kind: "task"`; 1.0: `result.task`, or the result itself of
  GetTask/CancelTask): `id`, `contextId`, its `status.message` and
  `history[]` (messages);
- a Message (0.3 `kind: "message"`, 1.0 `result.message`): `taskId`,
  `contextId`, `referenceTaskIds[]`;
- status and artifact updates (0.3 `kind: "status-update"` /
  `"artifact-update"`, 1.0 `result.statusUpdate` / `.artifactUpdate`):
  `taskId`, `contextId`, `status.message`;
- push-notification configs: `taskId` and the config's own `id` (a list of
  them in 0.3, `configs[]` in 1.0); requests name a config by 1.0's
  `params.id` of Get/DeleteTaskPushNotificationConfig or 0.3's
  `params.pushNotificationConfigId`.

Only these places: an id-like field inside message parts or metadata is the
caller's own data and is left alone. In requests each field is looked for
under its JSON name and its proto field name too (`task_id`, ...): the SDK's
parsers accept both (protobuf's ParseDict, pydantic by name), so an id under
either is one to check; and a non-string value there is a slot too (it can
name no task of the caller's, so the request is refused).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from xds_server.core.a2a import CONFIG_ID_METHODS, TASK_ID_METHODS

#: (the object holding it, its key) of one id; a list item's key is its index.
Slot = tuple[Any, Any]

_MESSAGE_IDS = ("taskId", "contextId")
#: A request field's JSON name → its proto field name (also accepted by the agent's SDK).
_SNAKE = {"taskId": "task_id", "contextId": "context_id", "referenceTaskIds": "reference_task_ids",
          "taskPushNotificationConfig": "task_push_notification_config",
          "pushNotificationConfigId": "push_notification_config_id"}  # fmt: skip


def _strings(holder: Any, key: Any) -> Iterator[Slot]:
    if isinstance(holder, dict) and isinstance(holder.get(key), str):
        yield holder, key
    elif isinstance(holder, list) and isinstance(key, int) and isinstance(holder[key], str):
        yield holder, key


def _message(message: Any) -> Iterator[Slot]:
    if not isinstance(message, dict):
        return
    for key in _MESSAGE_IDS:
        yield from _strings(message, key)
    references = message.get("referenceTaskIds")
    if isinstance(references, list):
        for i in range(len(references)):
            yield from _strings(references, i)


def _named(holder: Any, key: str) -> Iterator[Slot]:
    """A request's field under either name, whatever its value (None aside)."""
    if isinstance(holder, dict):
        for name in dict.fromkeys((key, _SNAKE.get(key, key))):
            if holder.get(name) is not None:
                yield holder, name


def _request_message(message: Any) -> Iterator[Slot]:
    if not isinstance(message, dict):
        return
    for key in _MESSAGE_IDS:
        yield from _named(message, key)
    for holder, name in list(_named(message, "referenceTaskIds")):
        references = holder[name]
        if not isinstance(references, list):
            yield holder, name  # not a list of ids: a slot that opens to nothing
            continue
        for i in range(len(references)):
            yield references, i


def _status(holder: dict[str, Any]) -> Iterator[Slot]:
    status = holder.get("status")
    if isinstance(status, dict):
        yield from _message(status.get("message"))


def _task(task: Any) -> Iterator[Slot]:
    if not isinstance(task, dict):
        return
    yield from _strings(task, "id")
    yield from _strings(task, "contextId")
    yield from _status(task)
    history = task.get("history")
    if isinstance(history, list):
        for item in history:
            yield from _message(item)


def _update(update: Any) -> Iterator[Slot]:
    if not isinstance(update, dict):
        return
    for key in _MESSAGE_IDS:
        yield from _strings(update, key)
    yield from _status(update)


def _push_config(config: Any) -> Iterator[Slot]:
    # Its own id too: agents choose it, and a2a-sdk makes it the task's id when the client gives none.
    if isinstance(config, dict):
        yield from _strings(config, "taskId")
        yield from _strings(config, "id")
        inner = config.get("pushNotificationConfig")  # 0.3: {taskId, pushNotificationConfig: {id, url, ...}}
        if isinstance(inner, dict):
            yield from _strings(inner, "id")


def request_slots(method: str, params: Any) -> list[Slot]:
    """Every id a request's params name (see the module docstring)."""
    if not isinstance(params, dict):
        return []
    slots = list(_request_message(params.get("message")))
    configuration = params.get("configuration")
    if isinstance(configuration, dict):
        for holder, name in list(_named(configuration, "taskPushNotificationConfig")):
            slots += _named(holder[name], "taskId")
    slots += _named(params, "taskId")
    if method in TASK_ID_METHODS or method in CONFIG_ID_METHODS:
        slots += _named(params, "id")
    slots += _named(params, "pushNotificationConfigId")
    return slots


def result_slots(result: Any) -> list[Slot]:
    """Every id an answer's result carries (see the module docstring)."""
    if isinstance(result, list):  # 0.3 push-notification config list
        return [s for item in result for s in _push_config(item)]
    if not isinstance(result, dict):
        return []
    kind = result.get("kind")
    if kind == "task" or ("status" in result and "id" in result and kind is None):
        return list(_task(result))
    if kind == "message":
        return list(_message(result))
    if kind in ("status-update", "artifact-update"):
        return list(_update(result))
    slots: list[Slot] = [*_task(result.get("task")), *_message(result.get("message")),
                         *_update(result.get("statusUpdate")), *_update(result.get("artifactUpdate"))]  # fmt: skip
    configs = result.get("configs")
    if isinstance(configs, list):
        slots += [s for item in configs for s in _push_config(item)]
    if not slots:
        slots += _push_config(result)  # a push-notification config
    return slots
