#!/usr/bin/env python3
"""A fake Claude Code CLI for the `claude` adapter's tests.

It speaks what `claude -p --input-format stream-json --output-format stream-json --verbose
--permission-prompt-tool stdio` speaks: one JSON object per line on stdin and stdout, shaped as
the Agent SDK's declarations say (tests/fakes/claude-agent-sdk/). Command-line arguments are
ignored.

Each user message is a script, one command per line:

    say TEXT            an assistant text block
    ask TOOL ARG        a tool_use block, then a can_use_tool request; on the answer an assistant
                        line "allowed: TOOL ARG" (with the possibly updated input) or
                        "denied: MESSAGE", and the tool_result
    edit PATH           the same for an Edit of PATH (old_string "old line", new_string "new line")
    write PATH TEXT     the same for a Write of PATH with content TEXT
    cancel TOOL ARG     a can_use_tool request withdrawn after 0.3 s with control_cancel_request;
                        the turn goes on without an answer
    sleep S             waits S seconds (an interrupt ends the turn meanwhile)
    cost USD            adds USD to the session's cost
    tokens IN OUT CREATE READ   the turn's token usage (default 100 20 0 0)
    stderr TEXT         TEXT on stderr
    garbage TEXT        TEXT on stdout, not JSON
    fail MESSAGE        ends the turn with an error_during_execution result
    apierror MESSAGE    ends the turn with a success-subtype result that has is_error set
    exit N              exits at once with status N, no result

Any other line is said back as assistant text. The turn ends with a result; the process exits 0
when stdin closes. Messages that arrive during a turn are queued for later turns, except control
messages, which are handled at once (interrupt ends the running turn, withdrawing a pending
can_use_tool). A malformed message from the client is a protocol error: a line on stderr and
exit status 3.

With FAKE_PROTOCOL_LOG set, every line read and written is appended to that file as
{"dir": "in"|"out", "msg": OBJECT} (or "raw": TEXT for lines that are not JSON).
"""

import json
import os
import queue
import sys
import threading
import time
import uuid

LOG_PATH = os.environ.get("FAKE_PROTOCOL_LOG")
LOG_LOCK = threading.Lock()
SESSION_ID = str(uuid.uuid4())
VERSION = "2.1.333"

inbox = queue.Queue()


def log(direction, key, value):
    if not LOG_PATH:
        return
    with LOG_LOCK:
        with open(LOG_PATH, "a", encoding="utf-8") as f:
            f.write(json.dumps({"dir": direction, key: value}) + "\n")


def send(msg):
    log("out", "msg", msg)
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()


def protocol_error(text):
    sys.stderr.write("fake_claude: protocol error: " + text + "\n")
    sys.stderr.flush()
    os._exit(3)


def reader():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            msg = json.loads(line)
        except ValueError:
            log("in", "raw", line)
            inbox.put(("bad", line))
            continue
        log("in", "msg", msg)
        inbox.put(("msg", msg))
    inbox.put(("eof", None))


class Interrupted(Exception):
    pass


class Session:
    def __init__(self):
        self.queued = []  # user messages that arrived during a turn
        self.eof = False
        self.cost = 0.0
        self.model_usage = {"input": 0, "output": 0, "create": 0, "read": 0}
        self.turn_running = False
        self.pending_permission = None  # request_id of the can_use_tool being waited on
        self.interrupted = False
        self.seq = 0

    def next_id(self, prefix):
        self.seq += 1
        return "%s-%d" % (prefix, self.seq)

    # Client messages.

    def check_user(self, msg):
        message = msg.get("message")
        if not isinstance(message, dict) or message.get("role") != "user":
            protocol_error("user message without message.role user: %r" % msg)
        content = message.get("content")
        if isinstance(content, str):
            return content
        if not isinstance(content, list):
            protocol_error("user message content is neither string nor list: %r" % msg)
        texts = []
        for block in content:
            if not isinstance(block, dict) or block.get("type") != "text":
                protocol_error("unexpected user content block: %r" % block)
            texts.append(block.get("text", ""))
        return "\n".join(texts)

    def handle(self, kind, msg, waiting_for=None):
        """Handles one inbox item. Returns the answer for `waiting_for`, if this was it."""
        if kind == "eof":
            self.eof = True
            return None
        if kind == "bad":
            protocol_error("not JSON: %r" % msg)
        t = msg.get("type")
        if t == "user":
            self.check_user(msg)
            self.queued.append(msg)
        elif t == "control_request":
            request = msg.get("request") or {}
            rid = msg.get("request_id")
            if not isinstance(rid, str):
                protocol_error("control_request without request_id: %r" % msg)
            if request.get("subtype") == "interrupt":
                send({"type": "control_response",
                      "response": {"subtype": "success", "request_id": rid,
                                   "response": {"still_queued": []}}})
                if self.turn_running:
                    self.interrupted = True
            else:
                send({"type": "control_response",
                      "response": {"subtype": "error", "request_id": rid,
                                   "error": "unsupported control request"}})
        elif t == "control_response":
            response = msg.get("response")
            if not isinstance(response, dict):
                protocol_error("control_response without response: %r" % msg)
            rid = response.get("request_id")
            if rid != waiting_for:
                # An answer to a request already withdrawn or never made.
                sys.stderr.write("fake_claude: unexpected control_response for %r\n" % rid)
                sys.stderr.flush()
                return None
            if response.get("subtype") != "success":
                protocol_error("can_use_tool answered with an error: %r" % msg)
            result = response.get("response")
            if not isinstance(result, dict):
                protocol_error("control_response without a permission result: %r" % msg)
            behavior = result.get("behavior")
            if behavior == "allow":
                if not isinstance(result.get("updatedInput"), dict):
                    protocol_error("allow without updatedInput: %r" % msg)
            elif behavior == "deny":
                if not isinstance(result.get("message"), str):
                    protocol_error("deny without message: %r" % msg)
            else:
                protocol_error("unknown behavior: %r" % msg)
            return result
        elif t == "control_cancel_request":
            pass
        else:
            protocol_error("unknown message type: %r" % msg)
        return None

    def pump(self, timeout, waiting_for=None):
        """Handles client messages for up to `timeout` seconds (0: those already there) or
        until `waiting_for` is answered; raises Interrupted when an interrupt ends the turn."""
        deadline = time.monotonic() + timeout
        while True:
            if self.interrupted:
                raise Interrupted()
            if self.eof and waiting_for is not None:
                protocol_error("stdin closed while a can_use_tool was pending")
            left = deadline - time.monotonic()
            try:
                if left <= 0:
                    kind, msg = inbox.get_nowait()
                else:
                    kind, msg = inbox.get(timeout=left)
            except queue.Empty:
                return None
            answer = self.handle(kind, msg, waiting_for)
            if answer is not None:
                return answer

    # Agent messages.

    def assistant(self, blocks, usage):
        send({"type": "assistant",
              "message": {"id": self.next_id("msg"), "type": "message", "role": "assistant",
                          "model": "claude-fake-1", "content": blocks,
                          "stop_reason": None, "stop_sequence": None,
                          "usage": usage_of(usage)},
              "parent_tool_use_id": None, "uuid": str(uuid.uuid4()),
              "session_id": SESSION_ID})

    def say(self, text, usage):
        self.assistant([{"type": "text", "text": text}], usage)

    def tool_result(self, tool_use_id, content, is_error):
        send({"type": "user",
              "message": {"role": "user",
                          "content": [{"type": "tool_result", "tool_use_id": tool_use_id,
                                       "content": content, "is_error": is_error}]},
              "parent_tool_use_id": None, "uuid": str(uuid.uuid4()),
              "session_id": SESSION_ID})

    def permission(self, tool, tool_input, tool_use_id):
        rid = self.next_id("perm")
        suggestions = [{"type": "addRules",
                        "rules": [{"toolName": tool}],
                        "behavior": "allow", "destination": "session"}]
        send({"type": "control_request", "request_id": rid,
              "request": {"subtype": "can_use_tool", "tool_name": tool, "input": tool_input,
                          "permission_suggestions": suggestions,
                          "tool_use_id": tool_use_id}})
        return rid

    def use_tool(self, tool, tool_input, usage):
        tool_use_id = self.next_id("toolu")
        self.assistant([{"type": "tool_use", "id": tool_use_id, "name": tool,
                         "input": tool_input}], usage)
        rid = self.permission(tool, tool_input, tool_use_id)
        self.pending_permission = rid
        try:
            answer = None
            while answer is None:
                answer = self.pump(3600, waiting_for=rid)
        except Interrupted:
            send({"type": "control_cancel_request", "request_id": rid})
            raise
        finally:
            self.pending_permission = None
        if answer["behavior"] == "allow":
            used = answer["updatedInput"]
            self.say("allowed: %s %s" % (tool, json.dumps(used, sort_keys=True)), usage)
            self.tool_result(tool_use_id, "ok: " + tool, False)
        else:
            self.say("denied: " + answer["message"], usage)
            self.tool_result(tool_use_id, answer["message"], True)

    def cancelled_tool(self, tool, tool_input, usage):
        tool_use_id = self.next_id("toolu")
        self.assistant([{"type": "tool_use", "id": tool_use_id, "name": tool,
                         "input": tool_input}], usage)
        rid = self.permission(tool, tool_input, tool_use_id)
        self.pump(0.3)
        send({"type": "control_cancel_request", "request_id": rid})
        self.say("withdrew " + rid, usage)

    def result(self, usage, error=None, api_error=None, num_turns=1):
        self.model_usage["input"] += usage["input"]
        self.model_usage["output"] += usage["output"]
        self.model_usage["create"] += usage["create"]
        self.model_usage["read"] += usage["read"]
        mu = self.model_usage
        common = {
            "type": "result",
            "duration_ms": 10, "duration_api_ms": 8,
            "num_turns": num_turns, "stop_reason": "end_turn",
            "total_cost_usd": self.cost,
            "usage": usage_of(usage),
            "modelUsage": {"claude-fake-1": {
                "inputTokens": mu["input"], "outputTokens": mu["output"],
                "cacheReadInputTokens": mu["read"],
                "cacheCreationInputTokens": mu["create"],
                "webSearchRequests": 0, "costUSD": self.cost,
                "contextWindow": 200000, "maxOutputTokens": 32000}},
            "permission_denials": [],
            "queued_turn_count": len(self.queued),
            "uuid": str(uuid.uuid4()), "session_id": SESSION_ID,
        }
        if error is not None:
            common.update({"subtype": "error_during_execution", "is_error": True,
                           "errors": [error]})
        else:
            common.update({"subtype": "success", "is_error": api_error is not None,
                           "result": api_error if api_error is not None else "done"})
        send(common)

    def run_turn(self, script):
        usage = {"input": 100, "output": 20, "create": 0, "read": 0}
        self.turn_running = True
        self.interrupted = False
        calls = 0
        try:
            for raw in script.splitlines():
                line = raw.strip()
                if not line:
                    continue
                word, _, rest = line.partition(" ")
                if word == "say":
                    self.say(rest, usage)
                    calls += 1
                elif word == "ask":
                    tool, _, arg = rest.partition(" ")
                    self.use_tool(tool, tool_input(tool, arg), usage)
                    calls += 1
                elif word == "edit":
                    self.use_tool("Edit", {"file_path": rest, "old_string": "old line",
                                           "new_string": "new line"}, usage)
                    calls += 1
                elif word == "write":
                    path, _, text = rest.partition(" ")
                    self.use_tool("Write", {"file_path": path, "content": text}, usage)
                    calls += 1
                elif word == "cancel":
                    tool, _, arg = rest.partition(" ")
                    self.cancelled_tool(tool, tool_input(tool, arg), usage)
                    calls += 1
                elif word == "sleep":
                    self.pump(float(rest))
                elif word == "cost":
                    self.cost += float(rest)
                elif word == "tokens":
                    i, o, c, r = (int(x) for x in rest.split())
                    usage = {"input": i, "output": o, "create": c, "read": r}
                elif word == "stderr":
                    sys.stderr.write(rest + "\n")
                    sys.stderr.flush()
                elif word == "garbage":
                    log("out", "raw", rest)
                    sys.stdout.write(rest + "\n")
                    sys.stdout.flush()
                elif word == "fail":
                    self.result(usage, error=rest, num_turns=max(calls, 1))
                    return
                elif word == "apierror":
                    self.result(usage, api_error=rest, num_turns=max(calls, 1))
                    return
                elif word == "exit":
                    os._exit(int(rest))
                else:
                    self.say(line, usage)
                    calls += 1
                self.pump(0)
            self.result(usage, num_turns=max(calls, 1))
        except Interrupted:
            self.result(usage, error="Request interrupted by user", num_turns=max(calls, 1))
        finally:
            self.turn_running = False
            self.interrupted = False

    def main(self):
        threading.Thread(target=reader, daemon=True).start()
        started = False
        while True:
            if self.queued:
                msg = self.queued.pop(0)
            elif self.eof:
                return 0
            else:
                kind, msg = inbox.get()
                self.handle(kind, msg)
                continue
            if not started:
                send({"type": "system", "subtype": "init", "apiKeySource": "none",
                      "claude_code_version": VERSION, "cwd": os.getcwd(),
                      "tools": ["Bash", "Edit", "Read", "Write"], "mcp_servers": [],
                      "model": "claude-fake-1", "permissionMode": "default",
                      "slash_commands": [], "output_style": "default", "skills": [],
                      "plugins": [], "uuid": str(uuid.uuid4()), "session_id": SESSION_ID})
                started = True
            self.run_turn(self.check_user(msg))


def tool_input(tool, arg):
    if tool == "Bash":
        return {"command": arg, "description": "runs " + arg}
    if tool in ("Read",):
        return {"file_path": arg}
    if tool in ("Grep", "Glob"):
        return {"pattern": arg}
    if tool == "WebFetch":
        return {"url": arg, "prompt": "summarise"}
    if tool == "WebSearch":
        return {"query": arg}
    if tool == "NotebookEdit":
        return {"notebook_path": arg, "new_source": "print(1)"}
    return {"arg": arg}


def usage_of(u):
    return {"input_tokens": u["input"], "output_tokens": u["output"],
            "cache_creation_input_tokens": u["create"], "cache_read_input_tokens": u["read"]}


if __name__ == "__main__":
    sys.exit(Session().main())
