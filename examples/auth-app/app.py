#!/usr/bin/env python3
"""A small app behind herald's --auth-url: users log in with a session cookie, and each may read
only their own private stream inbox:<user>. Standard library only.

    herald --private 'inbox:*' --auth-url http://127.0.0.1:8000/auth --cors-origin http://127.0.0.1:8000 &
    python3 examples/auth-app/app.py                 # then open http://127.0.0.1:8000/
    curl -X POST http://127.0.0.1:7070/streams/inbox:alice -d 'hello alice'

Cookies are per host, not per port, so the page at :8000 and herald at :7070 on 127.0.0.1 share
the session cookie — as an app and herald under one domain do behind a proxy.
"""
import html
import json
import secrets
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

HERALD = "http://127.0.0.1:7070"
SESSIONS = {}  # session id -> user name (a real app has its own session store)


class App(BaseHTTPRequestHandler):
    def user(self):
        cookie = SimpleCookie(self.headers.get("Cookie", ""))
        session = cookie.get("session")
        return SESSIONS.get(session.value) if session else None

    def answer(self, status, body, content_type="application/json", headers=()):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path == "/auth":  # herald asks: may this request read these streams?
            user = self.user()
            if user is None:
                return self.answer(401, json.dumps({"error": "log in first"}))
            if all(stream == f"inbox:{user}" for stream in query.get("stream", [])):
                return self.answer(200, json.dumps({"client": user}))
            return self.answer(403, json.dumps({"error": "that is not your inbox"}))
        if url.path == "/login":
            name = query.get("user", [""])[0]
            if not name.isalnum():
                return self.answer(400, "a user name is letters and digits", "text/plain")
            session = secrets.token_urlsafe(16)
            SESSIONS[session] = name
            cookie = f"session={session}; HttpOnly; SameSite=Lax; Path=/"
            return self.answer(302, "", "text/plain", [("Set-Cookie", cookie), ("Location", "/")])
        user = self.user()
        if user is None:
            page = '<form action="/login"><input name="user" placeholder="alice"> <button>Log in</button></form>'
        else:
            stream = html.escape(f"inbox:{user}")
            page = f"""<h1>{html.escape(user)}'s inbox</h1><ul id="events"></ul>
<script>
  const source = new EventSource("{HERALD}/sse?stream={stream}&last_id=0", {{withCredentials: true}});
  source.onmessage = (e) => {{
    const li = document.createElement("li"); li.textContent = e.data;
    document.getElementById("events").append(li);
  }};
</script>"""
        self.answer(200, f"<!doctype html><meta charset=utf-8><title>inbox</title>{page}", "text/html")


if __name__ == "__main__":
    print("the app on http://127.0.0.1:8000/ (herald asks it at /auth)")
    ThreadingHTTPServer(("127.0.0.1", 8000), App).serve_forever()
