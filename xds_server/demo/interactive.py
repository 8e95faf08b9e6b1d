"""Demo tools whose call involves the client again: progress, elicitation, sampling.

In either protocol revision (the SDK's resolvers: a request mid-call on
2025-11-25, an input-required round trip on 2026-07-28):

    count(n)              n progress notifications, then "counted to n"
    archive_repo(repo)    asks the user to confirm (elicitation), then "archived <repo>" or "kept <repo>"
    ask_model(question)   asks the client's model (sampling), then "the model says: <its text>"

No `from __future__ import annotations` here: the SDK reads these tools' annotations at run time.
"""

from typing import Annotated, Any

from mcp.server.mcpserver import Context, Elicit, Resolve, Sample
from mcp_types import CreateMessageResult, SamplingMessage, TextContent
from pydantic import BaseModel


class Confirmation(BaseModel):
    ok: bool


def _confirm(repo: str) -> Elicit[Confirmation]:
    return Elicit(f"Archive {repo}? It becomes read-only.", Confirmation)


def _model(question: str) -> Sample:
    return Sample([SamplingMessage(role="user", content=TextContent(type="text", text=question))], max_tokens=64)


def add_interactive_tools(server: Any) -> None:
    """Add count, announce_tools, archive_repo and ask_model to an `MCPServer`."""

    @server.tool(structured_output=False)
    async def count(n: int, ctx: Context) -> str:
        """Count to n, reporting progress at each step."""
        for i in range(1, n + 1):
            await ctx.report_progress(i, n, f"step {i} of {n}")
        return f"counted to {n}"

    @server.tool(structured_output=False)
    async def announce_tools(ctx: Context) -> str:
        """Tell clients the tool list changed, outside this call: to `subscriptions/listen` streams
        (2026-07-28) and on the session's GET stream (2025-11-25)."""
        await ctx.notify_tools_changed()
        await ctx.session.send_tool_list_changed()  # best effort: dropped where the session has no such stream
        return "announced"

    @server.tool(structured_output=False)
    def archive_repo(repo: str, answer: Annotated[Confirmation, Resolve(_confirm)]) -> str:
        """Archive a repository, once the user confirms."""
        return f"archived {repo}" if answer.ok else f"kept {repo}"

    @server.tool(structured_output=False)
    def ask_model(question: str, reply: Annotated[CreateMessageResult, Resolve(_model)]) -> str:
        """Ask the client's model a question."""
        return f"the model says: {getattr(reply.content, 'text', reply.content)}"
