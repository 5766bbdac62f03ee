#!/usr/bin/env python3
"""Regenerates the declaration excerpts in this directory from unpacked npm packages.

    npm pack @anthropic-ai/claude-agent-sdk@VERSION @anthropic-ai/sdk@VERSION
    mkdir agent sdk
    tar xzf anthropic-ai-claude-agent-sdk-*.tgz -C agent
    tar xzf anthropic-ai-sdk-*.tgz -C sdk
    python3 extract.py agent/package sdk/package

Each excerpt holds the named declarations verbatim, in the order listed, with comments removed
(so that the adapter's field check reads type definitions, not prose that mentions a name).
"""

import json
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

AGENT_SDK = [
    "SDKMessage", "SDKSystemMessage", "SDKAPIRetryMessage", "SDKAssistantMessage",
    "SDKAssistantMessageError", "SDKUserMessage", "SDKResultMessage", "SDKResultSuccess",
    "SDKResultError", "NonNullableUsage", "ModelUsage", "SDKControlRequest",
    "SDKControlRequestInner", "SDKControlInterruptRequest", "SDKControlInterruptResponse",
    "SDKControlPermissionRequest",
    "SDKControlResponse", "ControlResponse", "ControlErrorResponse", "SDKControlCancelRequest",
    "PermissionResult", "PermissionUpdate", "PermissionRuleValue",
]
AGENT_TOOLS = [
    "BashInput", "FileEditInput", "FileReadInput", "FileWriteInput", "GlobInput", "GrepInput",
    "NotebookEditInput", "WebFetchInput", "WebSearchInput",
]
BETA_MESSAGES = [
    "BetaMessage", "BetaContentBlock", "BetaTextBlock", "BetaThinkingBlock", "BetaToolUseBlock",
    "BetaUsage",
]
MESSAGES = [
    "MessageParam", "UserMessageParam", "MessageContentParam", "ContentBlockParam",
    "TextBlockParam", "ToolResultBlockParam",
]


def strip_comments(src):
    src = re.sub(r"/\*.*?\*/", "", src, flags=re.S)
    return re.sub(r"^\s*//.*$", "", src, flags=re.M)


def extract(path, names):
    lines = strip_comments(open(path, encoding="utf-8").read()).split("\n")
    out = []
    for name in names:
        pat = re.compile(r"^(export )?(declare )?(type|interface) " + re.escape(name) + r"\b")
        start = next((i for i, l in enumerate(lines) if pat.match(l)), None)
        if start is None:
            sys.exit("%s: no declaration of %s" % (path, name))
        depth, block = 0, []
        for line in lines[start:]:
            if not line.strip():
                continue
            block.append(line.rstrip())
            depth += line.count("{") - line.count("}")
            if depth == 0 and line.rstrip().endswith((";", "}")):
                break
        out.append("\n".join(block))
    return "\n\n".join(out) + "\n"


def version(package_dir):
    with open(os.path.join(package_dir, "package.json"), encoding="utf-8") as f:
        return json.load(f)["version"]


def write(name, header, body):
    with open(os.path.join(HERE, name), "w", encoding="utf-8") as f:
        f.write(header + "\n" + body)


def main(agent_dir, sdk_dir):
    agent_v, sdk_v = version(agent_dir), version(sdk_dir)
    write("sdk.d.ts",
          "// Excerpt of @anthropic-ai/claude-agent-sdk %s, sdk.d.ts (comments removed).\n" % agent_v,
          extract(os.path.join(agent_dir, "sdk.d.ts"), AGENT_SDK))
    write("sdk-tools.d.ts",
          "// Excerpt of @anthropic-ai/claude-agent-sdk %s, sdk-tools.d.ts (comments removed).\n"
          % agent_v,
          extract(os.path.join(agent_dir, "sdk-tools.d.ts"), AGENT_TOOLS))
    write("messages.d.ts",
          "// Excerpt of @anthropic-ai/sdk %s, resources/beta/messages/messages.d.ts and\n"
          "// resources/messages/messages.d.ts (comments removed).\n" % sdk_v,
          extract(os.path.join(sdk_dir, "resources/beta/messages/messages.d.ts"), BETA_MESSAGES)
          + "\n"
          + extract(os.path.join(sdk_dir, "resources/messages/messages.d.ts"), MESSAGES))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
