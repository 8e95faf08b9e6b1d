"""A2A facts the translators and the policy service share: the method names of each operation in
A2A 0.3 and 1.0 (as a2a-sdk 1.x speaks them), and where Envoy's A2A filter puts what it read.

A policy names an operation once (policy/a2a.py); it stands for both
generations' methods. Methods not listed here are refused everywhere: the
task list (`tasks/list`, `ListTasks`: it lists every caller's tasks), and
anything unknown.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

#: Where Envoy's A2A filter puts what it read (method, id; params.* for 0.3 names): the filter's name.
A2A_METADATA_NAMESPACE = "envoy.filters.http.a2a"

#: operation → its JSON-RPC methods (0.3 names, then 1.0 names).
OPERATION_METHODS: Mapping[str, tuple[str, ...]] = {
    "send": ("message/send", "SendMessage"),
    "stream": ("message/stream", "SendStreamingMessage"),
    "getTask": ("tasks/get", "GetTask"),
    "cancelTask": ("tasks/cancel", "CancelTask"),
    "subscribe": ("tasks/resubscribe", "SubscribeToTask"),
    "pushNotifications": (
        "tasks/pushNotificationConfig/set", "tasks/pushNotificationConfig/get",
        "tasks/pushNotificationConfig/list", "tasks/pushNotificationConfig/delete",
        "CreateTaskPushNotificationConfig", "GetTaskPushNotificationConfig",
        "ListTaskPushNotificationConfigs", "DeleteTaskPushNotificationConfig",
    ),
    "extendedCard": ("agent/getAuthenticatedExtendedCard", "GetExtendedAgentCard"),
}  # fmt: skip

#: method → its operation.
METHOD_OPERATION: Mapping[str, str] = {m: op for op, methods in OPERATION_METHODS.items() for m in methods}

#: Methods whose `params.id` is a task's id (the others name tasks in `taskId` fields only; 1.0's
#: Get/DeleteTaskPushNotificationConfig use `params.id` for the config's own id).
TASK_ID_METHODS = frozenset({
    "tasks/get", "tasks/cancel", "tasks/resubscribe", "GetTask", "CancelTask", "SubscribeToTask",
    "tasks/pushNotificationConfig/get", "tasks/pushNotificationConfig/list", "tasks/pushNotificationConfig/delete",
})  # fmt: skip

#: Methods whose `params.id` is a push-notification config's id (1.0; the task is in `params.taskId`).
CONFIG_ID_METHODS = frozenset({"GetTaskPushNotificationConfig", "DeleteTaskPushNotificationConfig"})

#: Methods that name an existing task (they must name one the caller owns).
TASK_METHODS = frozenset({*TASK_ID_METHODS, *OPERATION_METHODS["pushNotifications"]})

#: Methods whose answer is the agent's (extended) card.
CARD_METHODS = frozenset(OPERATION_METHODS["extendedCard"])

#: JSON-RPC methods of A2A the gateway never forwards, and why (in refusals).
NEVER_ALLOWED = {
    "tasks/list": "the task list holds every caller's tasks",
    "ListTasks": "the task list holds every caller's tasks",
}

#: Where a message may name the skill it is for (a gateway convention: A2A has no field of its own), in
#: the message's metadata or the request's: checked against the caller's granted skills.
SKILL_METADATA_KEY = "skillId"
#: The methods that send a message.
MESSAGE_METHODS = frozenset({*OPERATION_METHODS["send"], *OPERATION_METHODS["stream"]})

#: A2A's TaskNotFound (both generations): what a task that is not the caller's is answered with.
TASK_NOT_FOUND_CODE = -32001
TASK_NOT_FOUND_MESSAGE = "Task not found"


def skill_text(skill: Mapping[str, Any]) -> str:
    """A skill as canonical JSON, every field of it (what drift and pins are judged on: a field the agent
    adds or changes is a change)."""
    return json.dumps(skill, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def strings_in(value: Any) -> list[str]:
    """Every string in a JSON value (keys too): what screening reads."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*strings_in(k), *strings_in(v))]
    if isinstance(value, list):
        return [s for item in value for s in strings_in(item)]
    return []


def skill_digest(skill: Mapping[str, Any]) -> str:
    """sha256 (hex) of `skill_text`: a pinned skill's fingerprint."""
    return hashlib.sha256(skill_text(skill).encode("utf-8")).hexdigest()
