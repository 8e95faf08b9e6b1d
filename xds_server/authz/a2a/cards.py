"""An AgentCard as one caller may see it through the gateway (A2A 0.3 and 1.0 card shapes).

- Every interface URL names the gateway's route (`gateway_url`), so a client
  following the card never bypasses the gateway: 1.0's
  `supportedInterfaces[].url`, 0.3's `url` and `additionalInterfaces[].url`.
  Only JSON-RPC interfaces are kept (the gateway reads JSON-RPC only), and
  0.3's `preferredTransport` becomes JSONRPC.
- `skills` lists only the skills whose id one of the caller's grants names
  (and, exchange.py, that are as pinned and do not screen as an injection).
- Capabilities the caller was not granted are off: streaming (`stream`), push notifications
  (`pushNotifications`), the extended card (1.0
  `capabilities.extendedAgentCard`, 0.3 `supportsAuthenticatedExtendedCard`).
- `signatures` are dropped: they signed the agent's card, not this one.

Pure functions: the card is changed in place; nothing raises on odd shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

JSONRPC = "JSONRPC"


def gateway_url(headers: Mapping[str, str], route_path: str) -> str:
    """The URL of `route_path` as the client reached the gateway (its scheme and authority)."""
    scheme = headers.get(":scheme") or "http"
    authority = headers.get(":authority") or headers.get("host") or ""
    return f"{scheme}://{authority}{route_path}"


def rewrite_card(card: Any, url: str, shows_skill: Callable[[Mapping[str, Any]], bool],
                 operations: frozenset[str]) -> bool:  # fmt: skip
    """Rewrite `card` (a parsed AgentCard) for a caller granted `operations` who may see the skills
    `shows_skill` accepts (given each skill, its `id` a string); True when it looked like a card at all."""
    if not isinstance(card, dict):
        return False
    interfaces = card.get("supportedInterfaces")
    if isinstance(interfaces, list):
        card["supportedInterfaces"] = [dict(i, url=url) for i in interfaces
                                       if isinstance(i, dict) and i.get("protocolBinding") == JSONRPC]  # fmt: skip
    if "url" in card:
        card["url"] = url
        card["preferredTransport"] = JSONRPC
    additional = card.get("additionalInterfaces")
    if isinstance(additional, list):
        card["additionalInterfaces"] = [dict(i, url=url) for i in additional
                                        if isinstance(i, dict) and i.get("transport") == JSONRPC]  # fmt: skip
    skills = card.get("skills")
    if isinstance(skills, list):
        seen: set[str] = set()
        shown = []
        for skill in skills:  # a repeated id is left out after its first: one id, one skill
            if isinstance(skill, dict) and isinstance(skill.get("id"), str) and skill["id"] not in seen:
                seen.add(skill["id"])
                if shows_skill(skill):
                    shown.append(skill)
        card["skills"] = shown
    capabilities = card.get("capabilities")
    if isinstance(capabilities, dict):
        if "stream" not in operations and "streaming" in capabilities:
            capabilities["streaming"] = False
        if "pushNotifications" not in operations and "pushNotifications" in capabilities:
            capabilities["pushNotifications"] = False
        if "extendedCard" not in operations and "extendedAgentCard" in capabilities:
            capabilities["extendedAgentCard"] = False
    if "extendedCard" not in operations and "supportsAuthenticatedExtendedCard" in card:
        card["supportsAuthenticatedExtendedCard"] = False
    card.pop("signatures", None)
    return True
