"""A loopback stand-in for the Hugging Face Hub: the endpoints ``HfApi`` and ``hf_hub_download`` use, real protocol.

Standard library only. Repos live in memory as commits of ``{path: bytes}``; every file is accepted in "regular"
upload mode (base64 inside the ndjson commit), so no LFS / Xet traffic is involved. Listens on 127.0.0.1 only.

Endpoints (as observed from huggingface_hub 2.4, ecosystem.md §6):
    POST /api/repos/create                          create (409 + url when it exists)
    POST /api/validate-yaml                         accept
    GET  /api/whoami-v2                             the token's user
    POST /api/models/<id>/preupload/<rev>           uploadMode "regular" for every file
    POST /api/models/<id>/commit/<rev>              ndjson header + base64 files (+ deletions), one atomic commit
    POST /api/models/<id>/branch/<name>             create a branch from main
    GET  /api/models/<id>[/revision/<rev>]          repo info (sha, siblings)
    GET  /api/models/<id>/tree/<rev>[/<path>]       file list
    HEAD/GET /<id>/resolve/<rev>/<path>             file bytes, X-Repo-Commit, ETag, Content-Length

``HubStandIn.fail_next`` injects an error into the next request of a kind: ``{"commit": 500, "preupload": 403}``.
"""
from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlparse

__all__ = ["HubStandIn", "hub_stand_in"]

GITATTRIBUTES = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.pth filter=lfs diff=lfs merge=lfs -text\n"


def _git_blob_sha(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class HubStandIn:
    """In-memory Hub. ``tokens``: accepted write tokens (reads of public repos need none)."""

    def __init__(self, tokens: tuple[str, ...] = ("hf_test_token",), user: str = "test-user"):
        self.tokens = set(tokens)
        self.user = user
        self.repos: dict[str, dict] = {}
        self.fail_next: dict[str, int] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path): never headers, never bodies
        self.auth_seen: list[str | None] = []  # the tokens clients sent, to check what was used
        self.lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- repository state -------------------------------------------------------------------------------------
    def _new_commit(self, repo: dict, parent: str | None, files: dict[str, bytes], message: str) -> str:
        digest = hashlib.sha1(json.dumps([parent, message, time.time_ns(), sorted(
            (p, _git_blob_sha(b)) for p, b in files.items())]).encode()).hexdigest()
        repo["commits"][digest] = dict(files=files, parent=parent, message=message)
        return digest

    def create(self, repo_id: str, private: bool = False) -> dict:
        repo = dict(private=private, branches={}, commits={}, prs=0)
        repo["branches"]["main"] = self._new_commit(repo, None, {".gitattributes": GITATTRIBUTES}, "initial commit")
        self.repos[repo_id] = repo
        return repo

    def seed(self, repo_id: str, files: dict[str, bytes], message: str = "seed") -> str:
        """Create ``repo_id`` (if needed) and commit ``files`` to main, as if uploaded earlier."""
        repo = self.repos.get(repo_id) or self.create(repo_id)
        head = repo["branches"]["main"]
        sha = self._new_commit(repo, head, {**repo["commits"][head]["files"], **files}, message)
        repo["branches"]["main"] = sha
        return sha

    def head(self, repo_id: str, revision: str = "main") -> str | None:
        repo = self.repos.get(repo_id)
        return repo["branches"].get(revision) if repo else None

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        repo = self.repos[repo_id]
        sha = repo["branches"].get(revision, revision)
        return dict(repo["commits"][sha]["files"])

    def _resolve(self, repo_id: str, revision: str) -> str | None:
        repo = self.repos.get(repo_id)
        if repo is None:
            return None
        if revision in repo["branches"]:
            return repo["branches"][revision]
        return revision if revision in repo["commits"] else None

    # -- server lifecycle -------------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> HubStandIn:
        stand_in = self

        class Handler(_Handler):
            hub = stand_in

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs=dict(poll_interval=0.05), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None


@contextmanager
def hub_stand_in(**kwargs):
    hub = HubStandIn(**kwargs).start()
    try:
        yield hub
    finally:
        hub.stop()


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet
        pass

    # -- helpers ----------------------------------------------------------------------------------------------
    def _token(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

    def _authorized(self) -> bool:
        token = self._token()
        self.hub.auth_seen.append(token)
        return token in self.hub.tokens

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload=None, headers: dict | None = None, body: bytes | None = None,
              head: bool = False) -> None:
        if body is None:
            body = json.dumps(payload if payload is not None else {}).encode()
            headers = {"Content-Type": "application/json", **(headers or {})}
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, str(v))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _error(self, status: int, code: str | None, message: str, head: bool = False) -> None:
        headers = {"X-Error-Code": code} if code else {}
        headers["X-Error-Message"] = message
        self._send(status, {"error": message}, headers=headers, head=head)

    def _maybe_fail(self, kind: str) -> bool:
        with self.hub.lock:
            if kind in self.hub.fail_next:
                self._error(self.hub.fail_next.pop(kind), None, f"injected {kind} failure")
                return True
        return False

    def _repo_or_404(self, repo_id: str, head: bool = False) -> dict | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo["private"] and self._token() not in self.hub.tokens):
            self._error(404, "RepoNotFound", f"Repository Not Found for url: {self.path}", head=head)
            return None
        return repo

    # -- routing ----------------------------------------------------------------------------------------------
    def do_HEAD(self) -> None:
        self._route("HEAD")

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def _route(self, method: str) -> None:
        parsed = urlparse(self.path)
        path = unquote(parsed.path)
        self.hub.requests.append((method, path))
        query = parse_qs(parsed.query)
        try:
            if method == "POST" and path == "/api/repos/create":
                return self._create_repo()
            if method == "POST" and path == "/api/validate-yaml":
                self._body()
                return self._send(200, {})
            if path == "/api/whoami-v2":
                if not self._authorized():
                    return self._error(401, None, "Invalid credentials in Authorization header")
                return self._send(200, {"type": "user", "name": self.hub.user, "orgs": [], "auth": {}})
            if path.startswith("/api/models/"):
                return self._api_models(method, path[len("/api/models/"):], query)
            if "/resolve/" in path:
                return self._resolve_file(method, path)
            self._error(404, None, f"not found: {path}", head=method == "HEAD")
        except BrokenPipeError:
            pass

    def _create_repo(self) -> None:
        body = json.loads(self._body() or b"{}")
        if not self._authorized():
            return self._error(401, None, "Invalid username or password.")
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else f"{self.hub.user}/{body['name']}"
        url = f"{self.hub.url}/{repo_id}"
        with self.hub.lock:
            if repo_id in self.hub.repos:
                return self._send(409, {"error": "You already created this model repo", "url": url})
            self.hub.create(repo_id, private=bool(body.get("private") or body.get("visibility") == "private"))
        self._send(200, {"url": url, "name": repo_id})

    def _api_models(self, method: str, rest: str, query: dict) -> None:
        parts = rest.split("/")
        repo_id = "/".join(parts[:2])
        action, tail = (parts[2], parts[3:]) if len(parts) > 2 else (None, [])
        if method == "POST":
            body = self._body()
            if not self._authorized():
                return self._error(401, None, "Invalid credentials in Authorization header")
            repo = self._repo_or_404(repo_id)
            if repo is None:
                return
            if action == "preupload":
                if self._maybe_fail("preupload"):
                    return
                files = json.loads(body)["files"]
                return self._send(200, {"files": [
                    {"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]})
            if action == "commit":
                return self._commit(repo_id, repo, unquote("/".join(tail)), body, query)
            if action == "branch":
                branch = unquote("/".join(tail))
                with self.hub.lock:
                    if branch in repo["branches"]:
                        return self._error(409, None, "Reference already exists")
                    start = json.loads(body or b"{}").get("startingPoint") or "main"
                    repo["branches"][branch] = self.hub._resolve(repo_id, start)
                return self._send(200, {})
            return self._error(404, None, f"unknown action {action}")
        repo = self._repo_or_404(repo_id, head=method == "HEAD")
        if repo is None:
            return
        revision = unquote(tail[0]) if action in ("revision", "tree") and tail else "main"
        sha = self.hub._resolve(repo_id, revision)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        files = repo["commits"][sha]["files"]
        if action == "tree":
            prefix = "/".join(tail[1:])
            entries = [{"type": "file", "oid": _git_blob_sha(b), "size": len(b), "path": p}
                       for p, b in sorted(files.items()) if not prefix or p.startswith(prefix.rstrip("/") + "/")]
            return self._send(200, entries)
        card = files.get("README.md", b"").decode("utf-8", "replace")
        return self._send(200, {
            "id": repo_id, "modelId": repo_id, "sha": sha, "private": repo["private"], "disabled": False,
            "gated": False, "tags": [], "downloads": 0, "likes": 0, "library_name": "timm",
            "siblings": [{"rfilename": p, "size": len(b)} for p, b in sorted(files.items())],
            "cardData": _card_yaml(card),
        })

    def _commit(self, repo_id: str, repo: dict, revision: str, body: bytes, query: dict) -> None:
        if self._maybe_fail("commit"):
            return
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next(item["value"] for item in lines if item["key"] == "header")
        create_pr = query.get("create_pr", ["0"])[0] in ("1", "true")
        with self.hub.lock:
            parent = self.hub._resolve(repo_id, revision)
            if parent is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            if header.get("parentCommit") and header["parentCommit"] != parent:
                return self._error(412, None, "A commit has happened since. Please refresh and try again.")
            files = dict(repo["commits"][parent]["files"])
            for item in lines:
                value = item["value"]
                if item["key"] == "file":
                    if value.get("encoding", "base64") != "base64":
                        return self._error(400, None, "only base64 file content is supported")
                    files[value["path"]] = base64.b64decode(value["content"])
                elif item["key"] == "deletedFile":
                    files.pop(value["path"], None)
                elif item["key"] == "deletedFolder":
                    files = {p: b for p, b in files.items() if not p.startswith(value["path"].rstrip("/") + "/")}
                elif item["key"] == "lfsFile":
                    return self._error(400, None, "LFS is not supported by this stand-in")
            sha = self.hub._new_commit(repo, parent, files, header.get("summary", ""))
            pr_url = None
            if create_pr:
                repo["prs"] += 1
                repo["branches"][f"refs/pr/{repo['prs']}"] = sha
                pr_url = f"{self.hub.url}/{repo_id}/discussions/{repo['prs']}"
            else:
                repo["branches"][revision] = sha
        self._send(200, {"success": True, "commitOid": sha, "commitUrl": f"{self.hub.url}/{repo_id}/commit/{sha}",
                         "pullRequestUrl": pr_url})

    def _resolve_file(self, method: str, path: str) -> None:
        head = method == "HEAD"
        prefix, _, rest = path.lstrip("/").partition("/resolve/")
        repo_id = prefix
        repo = self._repo_or_404(repo_id, head=head)
        if repo is None:
            return
        # the revision may itself hold slashes (refs/pr/1): try the longest known one first
        parts = rest.split("/")
        for i in range(len(parts) - 1, 0, -1):
            revision, filename = "/".join(parts[:i]), "/".join(parts[i:])
            sha = self.hub._resolve(repo_id, revision)
            if sha is not None:
                break
        else:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {parts[0]}", head=head)
        data = repo["commits"][sha]["files"].get(filename)
        if data is None:
            return self._error(404, "EntryNotFound", f"{filename} does not exist at {revision}", head=head)
        headers = {"X-Repo-Commit": sha, "ETag": f'"{_git_blob_sha(data)}"', "Content-Type": "application/octet-stream"}
        self._send(200, headers=headers, body=data, head=head)


def _card_yaml(card: str) -> dict | None:
    if not card.startswith("---"):
        return None
    try:
        import yaml

        return yaml.safe_load(card.split("---", 2)[1])
    except Exception:
        return None
