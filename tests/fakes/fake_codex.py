#!/usr/bin/env python3
"""A stand-in for `codex app-server`, for the codex adapter's tests.

It speaks the app-server protocol on stdio: JSON-RPC 2.0 without the "jsonrpc" member, one JSON
object per line, with the method names, parameters and results of the schema vendored in
tests/fakes/codex-schema/ (stable API only). The text of each `turn/start` is a script, one step
per line:

    say TEXT          an agent message, streamed as two deltas
    run COMMAND       a commandExecution item: asks for approval (unless the approval policy is
                      "never" or the command was accepted for the session), runs COMMAND with
                      `sh -c` in the thread's cwd and reports its output and exit code
    edit PATH         a fileChange item (add or update of PATH): asks for approval, then writes
    fail MESSAGE      an `error` notification and the turn completed as failed with MESSAGE
    retry MESSAGE     an `error` notification that says it will retry
    warn MESSAGE      a `warning` notification
    tokens IN OUT     a token usage update; totals add up over the thread
    userinput TEXT    an `item/tool/requestUserInput` server request (the adapter answers none)
    stderr TEXT       TEXT on stderr, as codex logs
    wait              blocks until `turn/interrupt`
    exit N            exits at once with status N
    anything else     said back as an agent message

If FAKE_PROTOCOL_LOG names a file, every JSON line read and written is appended to it as
{"from": "client" | "server", "message": ...} (the raw line as a string if it is not JSON).
Standard library only.
"""

import json
import os
import subprocess
import sys
import threading
import time
import uuid

CLI_VERSION = "0.171.0"
LOG_PATH = os.environ.get("FAKE_PROTOCOL_LOG")

write_lock = threading.Lock()
log_lock = threading.Lock()


def log(direction, line):
    if not LOG_PATH:
        return
    try:
        message = json.loads(line)
    except ValueError:
        message = line
    with log_lock, open(LOG_PATH, "a", encoding="utf-8") as f:
        f.write(json.dumps({"from": direction, "message": message}) + "\n")


def send(message):
    line = json.dumps(message)
    with write_lock:
        log("server", line)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def now_ms():
    return int(time.time() * 1000)


def new_id():
    return str(uuid.uuid4())


class Turn:
    def __init__(self, turn_id):
        self.id = turn_id
        self.interrupted = threading.Event()


class Server:
    def __init__(self):
        self.initialized = False
        self.thread = None
        self.cwd = os.getcwd()
        self.approval_policy = None
        self.turn = None
        self.turn_lock = threading.Lock()
        self.next_request_id = 0
        # Server request id -> {"event", "reply"}.
        self.waiting = {}
        self.waiting_lock = threading.Lock()
        self.session_commands = set()
        self.total_in = 0
        self.total_out = 0

    # --- client messages ------------------------------------------------------------------

    def handle(self, message):
        if not isinstance(message, dict):
            return
        method = message.get("method")
        if method is not None and "id" in message:
            self.request(message["id"], method, message.get("params"))
        elif method is not None:
            if method == "initialized":
                self.initialized = True
        elif "id" in message:
            with self.waiting_lock:
                slot = self.waiting.get(message["id"])
            if slot is not None:
                slot["reply"] = message
                slot["event"].set()

    def request(self, rid, method, params):
        params = params if isinstance(params, dict) else {}
        if method == "initialize":
            if not isinstance(params.get("clientInfo"), dict):
                return self.error(rid, -32602, "initialize needs clientInfo")
            return send({"id": rid, "result": {
                "userAgent": "fake_codex/%s" % CLI_VERSION,
                "codexHome": "/nonexistent/.codex",
                "platformFamily": "unix",
                "platformOs": "linux",
            }})
        if not self.initialized:
            return self.error(rid, -32002, "not initialized")
        if method == "thread/start":
            return self.thread_start(rid, params)
        if method == "turn/start":
            return self.turn_start(rid, params)
        if method == "turn/interrupt":
            return self.turn_interrupt(rid, params)
        return self.error(rid, -32601, "method not found: %s" % method)

    def error(self, rid, code, message):
        send({"id": rid, "error": {"code": code, "message": message}})

    def thread_start(self, rid, params):
        if self.thread is not None:
            return self.error(rid, -32600, "this fake runs one thread")
        if isinstance(params.get("cwd"), str):
            self.cwd = params["cwd"]
        self.approval_policy = params.get("approvalPolicy")
        now = int(time.time())
        thread_id = new_id()
        self.thread = {
            "id": thread_id,
            "sessionId": thread_id,
            "preview": "",
            "ephemeral": False,
            "modelProvider": "fake",
            "model": "fake-model",
            "createdAt": now,
            "updatedAt": now,
            "status": {"type": "idle"},
            "path": None,
            "cwd": self.cwd,
            "cliVersion": CLI_VERSION,
            "source": "appServer",
            "projectId": None,
            "name": None,
            "turns": [],
        }
        send({"id": rid, "result": {
            "thread": self.thread,
            "model": "fake-model",
            "modelProvider": "fake",
            "serviceTier": None,
            "cwd": self.cwd,
            "approvalPolicy": self.approval_policy or "on-request",
            "approvalsReviewer": "user",
            "sandbox": {"type": "workspaceWrite", "writableRoots": [], "networkAccess": False,
                        "excludeTmpdirEnvVar": False, "excludeSlashTmp": False},
            "reasoningEffort": None,
        }})
        send({"method": "thread/started", "params": {"thread": self.thread}})

    def turn_start(self, rid, params):
        if self.thread is None or params.get("threadId") != self.thread["id"]:
            return self.error(rid, -32602, "unknown threadId")
        texts = [i.get("text", "") for i in params.get("input") or []
                 if isinstance(i, dict) and i.get("type") == "text"]
        with self.turn_lock:
            if self.turn is not None:
                # The real server would fold the input into the running turn; a client that
                # means a new turn must wait for turn/completed.
                return self.error(rid, -32600, "a turn is already running")
            turn = Turn(new_id())
            self.turn = turn
        send({"id": rid, "result": {"turn": self.turn_object(turn, "inProgress")}})
        worker = threading.Thread(target=self.run_turn, args=(turn, "\n".join(texts)),
                                  daemon=True)
        worker.start()

    def turn_interrupt(self, rid, params):
        turn = self.turn
        if (turn is None or params.get("threadId") != self.thread["id"]
                or params.get("turnId") != turn.id):
            return self.error(rid, -32602, "no such running turn")
        send({"id": rid, "result": {}})
        turn.interrupted.set()
        with self.waiting_lock:
            for slot in self.waiting.values():
                slot["event"].set()

    # --- a turn ---------------------------------------------------------------------------

    def turn_object(self, turn, status, error=None):
        return {"id": turn.id, "items": [], "status": status,
                "error": {"message": error} if error is not None else None}

    def notify(self, method, params):
        send({"method": method, "params": params})

    def ids(self, turn):
        return {"threadId": self.thread["id"], "turnId": turn.id}

    def ask(self, turn, method, params, timeout=120.0):
        """Sends a server request and waits for its reply (None if the turn was interrupted)."""
        event = threading.Event()
        with self.waiting_lock:
            rid = self.next_request_id
            self.next_request_id += 1
            self.waiting[rid] = {"event": event, "reply": None}
        send({"id": rid, "method": method, "params": params})
        event.wait(timeout)
        with self.waiting_lock:
            slot = self.waiting.pop(rid)
        if slot["reply"] is None:
            self.notify("serverRequest/resolved",
                        {"threadId": self.thread["id"], "requestId": rid})
        return slot["reply"]

    def asks_approval(self):
        return self.approval_policy not in (None, "never")

    def run_turn(self, turn, text):
        self.notify("turn/started", {"threadId": self.thread["id"],
                                     "turn": self.turn_object(turn, "inProgress")})
        user_item = {"type": "userMessage", "id": new_id(),
                     "content": [{"type": "text", "text": text}]}
        self.notify("item/started", dict(self.ids(turn), item=user_item, startedAtMs=now_ms()))
        self.notify("item/completed",
                    dict(self.ids(turn), item=user_item, completedAtMs=now_ms()))
        status, error = "completed", None
        for raw in text.splitlines():
            if turn.interrupted.is_set():
                break
            step, _, arg = raw.strip().partition(" ")
            if not step:
                continue
            if step == "exit":
                sys.stdout.flush()
                os._exit(int(arg or "0"))
            elif step == "fail":
                message = arg or "the turn failed"
                self.notify("error", dict(self.ids(turn), willRetry=False, error={
                    "message": message, "codexErrorInfo": "other", "additionalDetails": None}))
                status, error = "failed", message
                break
            elif step == "retry":
                self.notify("error", dict(self.ids(turn), willRetry=True, error={
                    "message": arg, "codexErrorInfo": "serverOverloaded"}))
            elif step == "stderr":
                sys.stderr.write(arg + "\n")
                sys.stderr.flush()
            elif step == "warn":
                self.notify("warning", {"threadId": self.thread["id"], "message": arg})
            elif step == "tokens":
                parts = (arg.split() + ["0", "0"])[:2]
                self.tokens(turn, int(parts[0]), int(parts[1]))
            elif step == "run":
                if not self.run_command(turn, arg):
                    status = "interrupted"
                    break
            elif step == "edit":
                if not self.edit(turn, arg):
                    status = "interrupted"
                    break
            elif step == "userinput":
                self.user_input(turn, arg)
            elif step == "wait":
                turn.interrupted.wait(60)
            elif step == "say":
                self.say(turn, arg)
            else:
                self.say(turn, raw.strip())
        if turn.interrupted.is_set():
            status, error = "interrupted", None
        with self.turn_lock:
            self.turn = None
        self.notify("turn/completed", {"threadId": self.thread["id"],
                                       "turn": self.turn_object(turn, status, error)})

    def say(self, turn, text):
        item = {"type": "agentMessage", "id": new_id(), "text": ""}
        self.notify("item/started", dict(self.ids(turn), item=item, startedAtMs=now_ms()))
        half = len(text) // 2
        for delta in (text[:half], text[half:]):
            if delta:
                self.notify("item/agentMessage/delta",
                            dict(self.ids(turn), itemId=item["id"], delta=delta))
        item["text"] = text
        self.notify("item/completed", dict(self.ids(turn), item=item, completedAtMs=now_ms()))

    def tokens(self, turn, tokens_in, tokens_out):
        self.total_in += tokens_in
        self.total_out += tokens_out

        def breakdown(i, o):
            return {"totalTokens": i + o, "inputTokens": i, "cachedInputTokens": 0,
                    "outputTokens": o, "reasoningOutputTokens": 0}

        self.notify("thread/tokenUsage/updated", dict(self.ids(turn), tokenUsage={
            "total": breakdown(self.total_in, self.total_out),
            "last": breakdown(tokens_in, tokens_out),
            "modelContextWindow": 258400,
        }))

    def decision(self, reply):
        """accept / acceptForSession / decline / cancel, or None (interrupted)."""
        if reply is None:
            return None
        result = reply.get("result")
        if isinstance(result, dict) and isinstance(result.get("decision"), str):
            return result["decision"]
        return "decline"

    def run_command(self, turn, command):
        started = now_ms()
        item = {"type": "commandExecution", "id": new_id(), "command": command, "cwd": self.cwd,
                "status": "inProgress",
                "commandActions": [{"type": "unknown", "command": command}],
                "aggregatedOutput": None, "exitCode": None, "durationMs": None}
        self.notify("item/started", dict(self.ids(turn), item=item, startedAtMs=started))
        decision = "accept"
        if self.asks_approval() and command not in self.session_commands:
            reply = self.ask(turn, "item/commandExecution/requestApproval", dict(
                self.ids(turn), itemId=item["id"], startedAtMs=started, command=command,
                cwd=self.cwd, reason="the fake runs what it is told",
                commandActions=item["commandActions"]))
            decision = self.decision(reply)
            if decision is None:
                return False
        if decision == "acceptForSession":
            self.session_commands.add(command)
        if decision in ("accept", "acceptForSession"):
            proc = subprocess.run(["sh", "-c", command], cwd=self.cwd, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, timeout=60)
            output = proc.stdout.decode("utf-8", "replace")
            if output:
                self.notify("item/commandExecution/outputDelta",
                            dict(self.ids(turn), itemId=item["id"], delta=output))
            item.update(status="completed" if proc.returncode == 0 else "failed",
                        aggregatedOutput=output, exitCode=proc.returncode,
                        durationMs=now_ms() - started)
        else:
            item["status"] = "declined"
        self.notify("item/completed", dict(self.ids(turn), item=item, completedAtMs=now_ms()))
        if decision == "cancel":
            turn.interrupted.set()
        return True

    def edit(self, turn, path):
        started = now_ms()
        full = os.path.join(self.cwd, path)
        added = "edited by fake codex"
        if os.path.exists(full):
            with open(full, encoding="utf-8") as f:
                old = f.read().splitlines()
            context = old[-1:]
            start = len(old) - len(context) + 1
            diff = "@@ -%d,%d +%d,%d @@\n" % (start, len(context), start, len(context) + 1)
            diff += "".join(" %s\n" % line for line in context) + "+%s\n" % added
            kind = {"type": "update", "move_path": None}
        else:
            diff = added + "\n"
            kind = {"type": "add"}
        item = {"type": "fileChange", "id": new_id(), "status": "inProgress",
                "changes": [{"path": full, "kind": kind, "diff": diff}]}
        self.notify("item/started", dict(self.ids(turn), item=item, startedAtMs=started))
        decision = "accept"
        if self.asks_approval():
            reply = self.ask(turn, "item/fileChange/requestApproval", dict(
                self.ids(turn), itemId=item["id"], startedAtMs=started, reason=None,
                grantRoot=None))
            decision = self.decision(reply)
            if decision is None:
                return False
        if decision in ("accept", "acceptForSession"):
            with open(full, "a", encoding="utf-8") as f:
                f.write(added + "\n")
            item["status"] = "completed"
        else:
            item["status"] = "declined"
        self.notify("item/completed", dict(self.ids(turn), item=item, completedAtMs=now_ms()))
        if decision == "cancel":
            turn.interrupted.set()
        return True

    def user_input(self, turn, question):
        reply = self.ask(turn, "item/tool/requestUserInput", dict(
            self.ids(turn), itemId=new_id(), isBlocking=True,
            questions=[{"id": "q1", "header": "Question", "question": question,
                        "options": None}]))
        if reply is None:
            return
        if "error" in reply:
            self.say(turn, "no answer: %s" % reply["error"].get("message", ""))
        else:
            self.say(turn, "answered")


def main():
    server = Server()
    for line in sys.stdin:
        line = line.rstrip("\n")
        if not line.strip():
            continue
        log("client", line)
        try:
            message = json.loads(line)
        except ValueError:
            send({"id": None, "error": {"code": -32700, "message": "parse error"}})
            continue
        server.handle(message)
    # Like the real server: stdin closed means the client is gone.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
