"""A local stand-in for Telegram's Bot API: a real HTTP server on 127.0.0.1 that answers the way
api.telegram.org does for the methods cryptomon uses.

- `getUpdates` with `offset` (confirms everything below it) and `timeout` (long poll: waits for an update);
  409 while a webhook is set, as Telegram does;
- `setWebhook` (`url`, `secret_token`; an empty url removes it) and `deleteWebhook`; with a webhook set,
  a user's message is POSTed to it with the `X-Telegram-Bot-Api-Secret-Token` header;
- `sendMessage`: 403 "Forbidden: bot was blocked by the user" for a blocked chat, 400 "chat not found"
  for a chat that never wrote to the bot;
- any method: 429 with `parameters.retry_after` while rate limited (`rate_limit`);
- a wrong token in the path: 401 Unauthorized.

The test plays the user: `user_sends(chat_id, text)` is a message typed in the chat; `messages(chat_id)`
is what the bot wrote there.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit


class FakeBotAPI:
    def __init__(self, token: str, username: str = "cryptomon_test_bot"):
        self.token = token
        self.username = username
        self.updates: list[dict] = []
        self.next_update_id = 1000
        self.chats: dict[int, dict] = {}  # chat id -> the chat object of its messages
        self.sent: dict[int, list[str]] = {}
        self.blocked: set[int] = set()
        self.rate_limited: dict[str, int] = {}  # method -> how many calls still get 429
        self.retry_after = 1
        self.webhook_url = ""
        self.webhook_secret = ""
        self.calls: list[str] = []
        self.condition = threading.Condition()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                self._handle(dict(parse_qsl(urlsplit(self.path).query)))

            def do_POST(self):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if "json" in (self.headers.get("Content-Type") or ""):
                    params = json.loads(raw or b"{}")
                else:
                    params = dict(parse_qsl(raw.decode()))
                self._handle(params)

            def _handle(self, params: dict):
                path = urlsplit(self.path).path
                token, _, method = path.removeprefix("/bot").partition("/")
                if token != fake.token:
                    status, answer = 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}
                else:
                    status, answer = fake.dispatch(method, params)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    # --- the API --------------------------------------------------------------------------------------

    def dispatch(self, method: str, params: dict) -> tuple[int, dict]:
        with self.condition:
            self.calls.append(method)
        handler = getattr(self, f"_api_{method}", None)
        if handler is None:
            return 404, {"ok": False, "error_code": 404, "description": "Not Found"}
        with self.condition:
            if self.rate_limited.get(method, 0) > 0:
                self.rate_limited[method] -= 1
                return 429, {
                    "ok": False,
                    "error_code": 429,
                    "description": f"Too Many Requests: retry after {self.retry_after}",
                    "parameters": {"retry_after": self.retry_after},
                }
        return handler(params)

    def _api_getMe(self, params):
        return 200, {"ok": True, "result": {"id": 1, "is_bot": True, "username": self.username}}

    def _api_setWebhook(self, params):
        with self.condition:
            self.webhook_url = str(params.get("url") or "")
            self.webhook_secret = str(params.get("secret_token") or "")
        description = "Webhook was set" if self.webhook_url else "Webhook was deleted"
        return 200, {"ok": True, "result": True, "description": description}

    def _api_deleteWebhook(self, params):
        return self._api_setWebhook({"url": ""})

    def _api_getUpdates(self, params):
        offset = int(params.get("offset") or 0)
        timeout = float(params.get("timeout") or 0)
        deadline = time.monotonic() + timeout
        with self.condition:
            if self.webhook_url:
                description = "Conflict: can't use getUpdates method while webhook is active"
                return 409, {"ok": False, "error_code": 409, "description": description}
            while True:
                if offset:
                    self.updates = [u for u in self.updates if u["update_id"] >= offset]
                if self.updates or time.monotonic() >= deadline:
                    return 200, {"ok": True, "result": list(self.updates[:100])}
                self.condition.wait(max(0.0, deadline - time.monotonic()))

    def _api_sendMessage(self, params):
        chat_id = int(params.get("chat_id"))
        text = str(params.get("text") or "")
        with self.condition:
            if chat_id in self.blocked:
                return 403, {
                    "ok": False,
                    "error_code": 403,
                    "description": "Forbidden: bot was blocked by the user",
                }
            if chat_id not in self.chats:
                return 400, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"}
            if not text:
                return 400, {
                    "ok": False,
                    "error_code": 400,
                    "description": "Bad Request: message text is empty",
                }
            self.sent.setdefault(chat_id, []).append(text)
            self.condition.notify_all()
            result = {"message_id": len(self.sent[chat_id]), "chat": self.chats[chat_id], "text": text}
            return 200, {"ok": True, "result": result}

    # --- the user's side ------------------------------------------------------------------------------

    def user_sends(self, chat_id: int, text: str, first_name: str = "Trader") -> int | None:
        """A message typed in a private chat with the bot: queued for getUpdates, or POSTed to the webhook
        (then the webhook's HTTP status is returned)."""
        chat = {"id": chat_id, "type": "private", "first_name": first_name}
        with self.condition:
            self.chats[chat_id] = chat
            self.next_update_id += 1
            update = {
                "update_id": self.next_update_id,
                "message": {
                    "message_id": self.next_update_id,
                    "from": {"id": chat_id, "is_bot": False, "first_name": first_name},
                    "chat": chat,
                    "date": int(time.time()),
                    "text": text,
                },
            }
            webhook, secret = self.webhook_url, self.webhook_secret
            if not webhook:
                self.updates.append(update)
                self.condition.notify_all()
                return None
        request = urllib.request.Request(
            webhook,
            data=json.dumps(update).encode(),
            headers={"Content-Type": "application/json", "X-Telegram-Bot-Api-Secret-Token": secret},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as error:
            return error.code

    def block(self, chat_id: int) -> None:
        with self.condition:
            self.blocked.add(chat_id)

    def rate_limit(self, count: int, retry_after: int = 1, method: str = "sendMessage") -> None:
        """The next `count` calls of `method` get 429 with `parameters.retry_after`."""
        with self.condition:
            self.rate_limited[method], self.retry_after = count, retry_after

    def messages(self, chat_id: int) -> list[str]:
        with self.condition:
            return list(self.sent.get(chat_id, []))

    def wait_for_message(self, chat_id: int, contains: str, since: int = 0, timeout: float = 30.0) -> str:
        """The first message to the chat containing `contains`, from its `since`-th message on (the
        timeout is an upper bound for a busy machine)."""
        deadline = time.monotonic() + timeout
        with self.condition:
            while True:
                for text in self.sent.get(chat_id, [])[since:]:
                    if contains in text:
                        return text
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no message containing {contains!r} in chat {chat_id}: {self.sent}")
                self.condition.wait(left)

    def close(self) -> None:
        with self.condition:
            self.condition.notify_all()
        self.server.shutdown()
        self.server.server_close()
