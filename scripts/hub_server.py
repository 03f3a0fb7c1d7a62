#!/usr/bin/env python3
"""Minimal local imitation of the Hugging Face Hub HTTP API, with request recording.

Enough of the Hub for `huggingface_hub.HfApi(endpoint=...).create_repo / upload_folder / create_commit`
(classic LFS path, i.e. HF_HUB_DISABLE_XET=1 or hf_xet absent) and `hf_hub_download` to complete.

Usage:
    python hub_server.py --port 8123 --log requests.jsonl --store DIR
        [--token hf_test] [--user someone]
        [--multipart-threshold BYTES --chunk-size BYTES]   # answer LFS batch with HF "multipart" for big objects
        [--lfs-threshold BYTES]                              # preupload size limit above which a file is "lfs"
        [--no-verify]                                        # don't add a "verify" action to LFS batch answers

Everything uploaded is kept under DIR (state.json, blobs/, lfs/, plus a plain copy of each branch head under
DIR/checkout/<type>s/<ns>/<name>/<branch>/...), so a later GET /<repo>/resolve/<rev>/<path> serves it back,
also after a server restart.

Each request becomes one JSON line in --log:
    {"seq", "method", "path", "query", "headers", "body": {...}, "response": {"status", "json"?}}
headers: all request headers, lower-cased, except user-agent, host and x-amzn-trace-id (random per request).
body: {"json": ...} for JSON bodies, {"ndjson": [...]} for the commit, {"len", "sha256"} for anything binary.

Hub routes implemented (repo = "<ns>/<name>", type prefix "datasets/" / "spaces/" where the Hub uses one):
    GET  /api/whoami-v2
    POST /api/repos/create                              {"name","organization","type","visibility"?}
    POST /api/validate-yaml                             {"content","repoType"}
    GET  /api/{type}s/{repo}[/revision/{rev}]           repo info (sha, siblings)
    GET  /api/{type}s/{repo}/tree/{rev}[/{path}]        tree listing
    POST /api/{type}s/{repo}/paths-info/{rev}           paths info
    POST /api/{type}s/{repo}/preupload/{rev}            {"files":[{path,size,sample}], "gitIgnore"?}
    POST /{prefix}{repo}.git/info/lfs/objects/batch     git-lfs batch API (basic / HF multipart)
    PUT  /__lfs/upload/{oid}                            "presigned" single-part upload (no auth, like S3)
    PUT  /__lfs/part/{oid}/{n}                          multipart part upload, answers an ETag
    POST /__lfs/complete/{oid}                          multipart completion {"oid","parts":[{partNumber,etag}]}
    POST /{prefix}{repo}.git/info/lfs/objects/verify    {"oid","size"}
    POST /api/{type}s/{repo}/commit/{rev}               NDJSON commit
    GET  /api/{type}s/{repo}/xet-{read|write}-token/{rev}   -> 501 (no Xet/CAS here)
    HEAD/GET /{prefix}{repo}/resolve/{rev}/{path}       file download (Range supported)
"""

import argparse
import base64
import fnmatch
import hashlib
import json
import os
import re
import shutil
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit

REPO_TYPES = {"model": "", "dataset": "datasets/", "space": "spaces/"}
PREFIX_TO_TYPE = {"datasets": "dataset", "spaces": "space"}

# .gitattributes the Hub puts in every new model repo (initial commit).
DEFAULT_GITATTRIBUTES = """*.7z filter=lfs diff=lfs merge=lfs -text
*.arrow filter=lfs diff=lfs merge=lfs -text
*.bin filter=lfs diff=lfs merge=lfs -text
*.bz2 filter=lfs diff=lfs merge=lfs -text
*.ckpt filter=lfs diff=lfs merge=lfs -text
*.ftz filter=lfs diff=lfs merge=lfs -text
*.gz filter=lfs diff=lfs merge=lfs -text
*.h5 filter=lfs diff=lfs merge=lfs -text
*.joblib filter=lfs diff=lfs merge=lfs -text
*.lfs.* filter=lfs diff=lfs merge=lfs -text
*.mlmodel filter=lfs diff=lfs merge=lfs -text
*.model filter=lfs diff=lfs merge=lfs -text
*.msgpack filter=lfs diff=lfs merge=lfs -text
*.npy filter=lfs diff=lfs merge=lfs -text
*.npz filter=lfs diff=lfs merge=lfs -text
*.onnx filter=lfs diff=lfs merge=lfs -text
*.ot filter=lfs diff=lfs merge=lfs -text
*.parquet filter=lfs diff=lfs merge=lfs -text
*.pb filter=lfs diff=lfs merge=lfs -text
*.pickle filter=lfs diff=lfs merge=lfs -text
*.pkl filter=lfs diff=lfs merge=lfs -text
*.pt filter=lfs diff=lfs merge=lfs -text
*.pth filter=lfs diff=lfs merge=lfs -text
*.rar filter=lfs diff=lfs merge=lfs -text
*.safetensors filter=lfs diff=lfs merge=lfs -text
saved_model/**/* filter=lfs diff=lfs merge=lfs -text
*.tar.* filter=lfs diff=lfs merge=lfs -text
*.tar filter=lfs diff=lfs merge=lfs -text
*.tflite filter=lfs diff=lfs merge=lfs -text
*.tgz filter=lfs diff=lfs merge=lfs -text
*.wasm filter=lfs diff=lfs merge=lfs -text
*.xz filter=lfs diff=lfs merge=lfs -text
*.zip filter=lfs diff=lfs merge=lfs -text
*.zst filter=lfs diff=lfs merge=lfs -text
*tfevents* filter=lfs diff=lfs merge=lfs -text
"""

HIDDEN_HEADERS = {"user-agent", "host", "x-amzn-trace-id"}


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def glob_match(pattern: str, path: str) -> bool:
    """Rough gitattributes/gitignore matching: patterns without '/' match the basename anywhere."""
    pattern = pattern.strip()
    if not pattern:
        return False
    anchored = pattern.startswith("/")
    pattern = pattern.lstrip("/")
    if pattern.endswith("/"):
        pattern = pattern + "**"
    if "/" not in pattern and not anchored:
        return fnmatch.fnmatchcase(path.rsplit("/", 1)[-1], pattern) or fnmatch.fnmatchcase(path, pattern)
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif pattern[i] == "*":
            regex += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            regex += "[^/]"
            i += 1
        else:
            regex += re.escape(pattern[i])
            i += 1
    return re.fullmatch(regex, path) is not None


def lfs_patterns(gitattributes: str):
    pats = []
    for line in gitattributes.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not parts[0].startswith("#") and "filter=lfs" in parts[1:]:
            pats.append(parts[0])
    return pats


def is_lfs_tracked(gitattributes: str, path: str) -> bool:
    return any(glob_match(p, path) for p in lfs_patterns(gitattributes))


def is_ignored(gitignore: str, path: str) -> bool:
    ignored = False
    for line in gitignore.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        neg = line.startswith("!")
        pat = line[1:] if neg else line
        if glob_match(pat, path) or any(glob_match(pat, "/".join(path.split("/")[: i + 1])) for i in range(path.count("/"))):
            ignored = not neg
    return ignored


class Store:
    """Repos, commits and blobs, persisted under DIR."""

    def __init__(self, root: str):
        self.root = os.path.abspath(root)
        self.lock = threading.RLock()
        for sub in ("blobs", "lfs", "tmp", "checkout"):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)
        self.state_path = os.path.join(self.root, "state.json")
        if os.path.exists(self.state_path):
            with open(self.state_path) as f:
                self.state = json.load(f)
        else:
            self.state = {"repos": {}}

    # --- persistence -------------------------------------------------------------------------
    def save(self):
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.state, f, indent=1, sort_keys=True)
        os.replace(tmp, self.state_path)

    @staticmethod
    def key(repo_type: str, repo_id: str) -> str:
        return f"{repo_type}s/{repo_id}"

    def repo(self, repo_type, repo_id):
        return self.state["repos"].get(self.key(repo_type, repo_id))

    # --- blobs -------------------------------------------------------------------------------
    def put_blob(self, data: bytes) -> str:
        oid = git_blob_sha1(data)
        path = os.path.join(self.root, "blobs", oid)
        if not os.path.exists(path):
            with open(path + ".tmp", "wb") as f:
                f.write(data)
            os.replace(path + ".tmp", path)
        return oid

    def blob_path(self, entry) -> str:
        if entry["lfs"]:
            return os.path.join(self.root, "lfs", entry["sha256"])
        return os.path.join(self.root, "blobs", entry["blob"])

    def lfs_path(self, oid: str) -> str:
        return os.path.join(self.root, "lfs", oid)

    def has_lfs(self, oid: str) -> bool:
        return os.path.exists(self.lfs_path(oid))

    def read_entry(self, entry) -> bytes:
        with open(self.blob_path(entry), "rb") as f:
            return f.read()

    # --- repos / commits ---------------------------------------------------------------------
    def create_repo(self, repo_type, repo_id, private, user):
        with self.lock:
            if self.repo(repo_type, repo_id) is not None:
                return False
            ga = DEFAULT_GITATTRIBUTES.encode()
            files = {".gitattributes": {"lfs": False, "blob": self.put_blob(ga), "size": len(ga)}}
            repo = {"type": repo_type, "id": repo_id, "private": bool(private), "branches": {}, "commits": {}}
            self.state["repos"][self.key(repo_type, repo_id)] = repo
            oid = self._add_commit(repo, None, "initial commit", "", files, user)
            repo["branches"]["main"] = oid
            self.save()
            self._checkout(repo, "main")
            return True

    def _add_commit(self, repo, parent, summary, description, files, user):
        body = json.dumps(
            {"parent": parent, "summary": summary, "description": description, "files": files, "t": time.time(),
             "n": uuid.uuid4().hex}, sort_keys=True
        ).encode()
        oid = hashlib.sha1(body).hexdigest()
        repo["commits"][oid] = {
            "parent": parent, "summary": summary, "description": description, "files": files,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()), "author": user,
        }
        return oid

    def resolve(self, repo, rev):
        rev = unquote(rev)
        if rev in repo["branches"]:
            return repo["branches"][rev]
        if rev in repo["commits"]:
            return rev
        return None

    def files_at(self, repo, rev):
        oid = self.resolve(repo, rev)
        return None if oid is None else repo["commits"][oid]["files"]

    def _checkout(self, repo, branch):
        """Plain copy of a branch head, for humans and tests."""
        base = os.path.join(self.root, "checkout", f"{repo['type']}s", *repo["id"].split("/"), branch.replace("/", "--"))
        shutil.rmtree(base, ignore_errors=True)
        for path, entry in repo["commits"][repo["branches"][branch]]["files"].items():
            dst = os.path.join(base, *path.split("/"))
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            try:
                os.link(self.blob_path(entry), dst)
            except OSError:
                shutil.copyfile(self.blob_path(entry), dst)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "local-hub/1"
    store: Store = None
    args = None
    log_lock = threading.Lock()
    seq = [0]

    # --- plumbing ----------------------------------------------------------------------------
    def log_message(self, fmt, *a):  # quiet default logging; we write JSONL instead
        if self.args.verbose:
            sys.stderr.write("%s - %s\n" % (self.address_string(), fmt % a))

    def base_url(self):
        if self.args.public_url:
            return self.args.public_url.rstrip("/")
        return f"http://{self.headers.get('Host', '127.0.0.1:%d' % self.server.server_address[1])}"

    def read_body(self) -> bytes:
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            out = bytearray()
            while True:
                line = self.rfile.readline()
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                out += self.rfile.read(size)
                self.rfile.readline()
            return bytes(out)
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def record(self, body: bytes, status: int, resp_json):
        u = urlsplit(self.path)
        headers = {}
        for k, v in self.headers.items():
            if k.lower() not in HIDDEN_HEADERS:
                headers[k.lower()] = v
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        b = {"len": len(body)}
        if body:
            b["sha256"] = hashlib.sha256(body).hexdigest()
            if ctype == "application/x-ndjson":
                try:
                    b["ndjson"] = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                    b["raw"] = body.decode()
                except Exception:
                    pass
            elif ctype in ("application/json", "application/vnd.git-lfs+json"):
                try:
                    b["json"] = json.loads(body)
                    b["raw"] = body.decode()
                except Exception:
                    pass
        entry = {
            "seq": None,
            "t": round(time.time(), 3),
            "method": self.command,
            "path": u.path,
            "query": u.query,
            "headers": headers,
            "body": b,
            "response": {"status": status},
        }
        if resp_json is not None:
            entry["response"]["json"] = resp_json
        with self.log_lock:
            self.seq[0] += 1
            entry["seq"] = self.seq[0]
            if self.args.log:
                with open(self.args.log, "a") as f:
                    f.write(json.dumps(entry) + "\n")

    def send(self, status, obj=None, *, body: bytes = None, ctype="application/json", headers=None, head=False,
             req_body=b""):
        if obj is not None:
            body = json.dumps(obj).encode()
        body = body or b""
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Request-Id", "Root=1-" + uuid.uuid4().hex[:24])
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if not head and self.command != "HEAD":
            self.wfile.write(body)
        self.record(req_body, status, obj if ctype.startswith("application/") and "json" in ctype else None)

    def error(self, status, msg, code=None, req_body=b"", head=False):
        h = {"X-Error-Message": msg}
        if code:
            h["X-Error-Code"] = code
        self.send(status, {"error": msg}, headers=h, req_body=req_body, head=head)

    def check_auth(self, req_body=b"", head=False) -> bool:
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            self.error(401, "Invalid credentials in Authorization header", req_body=req_body, head=head)
            return False
        if self.args.token and auth[len("Bearer "):] != self.args.token:
            self.error(401, "Invalid credentials in Authorization header", req_body=req_body, head=head)
            return False
        return True

    # --- dispatch ----------------------------------------------------------------------------
    def do_GET(self):
        self.dispatch(head=False)

    def do_HEAD(self):
        self.dispatch(head=True)

    def do_POST(self):
        self.dispatch()

    def do_PUT(self):
        self.dispatch()

    def do_DELETE(self):
        self.dispatch()

    def dispatch(self, head=False):
        body = b"" if self.command in ("GET", "HEAD") else self.read_body()
        path = urlsplit(self.path).path
        qs = parse_qs(urlsplit(self.path).query)
        try:
            return self.route(path, qs, body, head)
        except Exception as e:  # pragma: no cover
            import traceback

            traceback.print_exc()
            self.error(500, f"internal error: {e!r}", req_body=body)

    def route(self, path, qs, body, head):
        m = self.command
        p = path
        if m == "GET" and p == "/api/whoami-v2":
            if not self.check_auth():
                return
            return self.send(200, {
                "type": "user", "id": "0" * 24, "name": self.args.user, "fullname": self.args.user,
                "email": None, "emailVerified": False, "isPro": False, "orgs": [],
                "auth": {"type": "access_token", "accessToken": {"displayName": "local", "role": "write"}},
            })
        if m == "POST" and p == "/api/repos/create":
            return self.create_repo(body)
        if m == "POST" and p == "/api/validate-yaml":
            return self.send(200, {"errors": [], "warnings": []}, req_body=body)

        # /__lfs/... : "storage" endpoints (S3 stand-ins)
        mm = re.fullmatch(r"/__lfs/upload/([0-9a-f]{64})", p)
        if mm and m == "PUT":
            return self.lfs_put(mm.group(1), body)
        mm = re.fullmatch(r"/__lfs/part/([0-9a-f]{64})/(\d+)", p)
        if mm and m == "PUT":
            return self.lfs_put_part(mm.group(1), int(mm.group(2)), body)
        mm = re.fullmatch(r"/__lfs/complete/([0-9a-f]{64})", p)
        if mm and m == "POST":
            return self.lfs_complete(mm.group(1), body)

        # /api/{type}s/{ns}/{name}/...
        mm = re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(.*))?", p)
        if mm:
            repo_type = mm.group(1)[:-1]
            repo_id = unquote(mm.group(2))
            rest = mm.group(3) or ""
            return self.api_repo(repo_type, repo_id, rest, qs, body, head)

        # git-lfs endpoints: /{prefix}{ns}/{name}.git/info/lfs/objects/{batch|verify}
        mm = re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)\.git/info/lfs/objects/(batch|verify)", p)
        if mm and m == "POST":
            repo_type = PREFIX_TO_TYPE.get(mm.group(1), "model")
            repo_id = unquote(mm.group(2))
            if mm.group(3) == "batch":
                return self.lfs_batch(repo_type, repo_id, body)
            return self.lfs_verify(repo_type, repo_id, body)

        # downloads: /{prefix}{ns}/{name}/resolve/{rev}/{path}
        mm = re.fullmatch(r"/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", p)
        if mm and m in ("GET", "HEAD"):
            repo_type = PREFIX_TO_TYPE.get(mm.group(1), "model")
            return self.resolve_file(repo_type, unquote(mm.group(2)), unquote(mm.group(3)), unquote(mm.group(4)), head)

        return self.error(404, f"Not found: {m} {p}", req_body=body, head=head)

    # --- endpoints ---------------------------------------------------------------------------
    def create_repo(self, body):
        if not self.check_auth(body):
            return
        try:
            payload = json.loads(body or b"{}")
        except ValueError:
            return self.error(400, "Invalid JSON", req_body=body)
        name = payload.get("name")
        org = payload.get("organization") or self.args.user
        repo_type = payload.get("type") or "model"
        if repo_type not in REPO_TYPES or not name:
            return self.error(400, "Invalid repo type or name", req_body=body)
        repo_id = f"{org}/{name}"
        private = payload.get("private") or payload.get("visibility") == "private"
        url = f"{self.base_url()}/{REPO_TYPES[repo_type]}{repo_id}"
        created = self.store.create_repo(repo_type, repo_id, private, self.args.user)
        if not created:
            return self.send(409, {"error": f"You already created this {repo_type} repo", "url": url},
                             headers={"X-Error-Message": f"You already created this {repo_type} repo"}, req_body=body)
        return self.send(200, {"url": url, "name": repo_id, "id": uuid.uuid4().hex[:24]}, req_body=body)

    def repo_or_404(self, repo_type, repo_id, body=b"", head=False):
        repo = self.store.repo(repo_type, repo_id)
        if repo is None:
            self.error(404, "Repository not found", code="RepoNotFound", req_body=body, head=head)
        return repo

    def api_repo(self, repo_type, repo_id, rest, qs, body, head):
        m = self.command
        repo = self.repo_or_404(repo_type, repo_id, body, head)
        if repo is None:
            return
        if m == "GET" and (rest == "" or rest.startswith("revision/")):
            rev = unquote(rest[len("revision/"):]) if rest else "main"
            return self.repo_info(repo, rev)
        mm = re.fullmatch(r"(preupload|commit|paths-info|tree|xet-read-token|xet-write-token)/([^/]+)(?:/(.*))?", rest)
        if not mm:
            return self.error(404, f"Not found: {m} /api/{repo_type}s/{repo_id}/{rest}", req_body=body, head=head)
        what, rev, sub = mm.group(1), unquote(mm.group(2)), mm.group(3)
        if what == "preupload" and m == "POST":
            return self.preupload(repo, rev, qs, body)
        if what == "commit" and m == "POST":
            return self.commit(repo, rev, qs, body)
        if what == "paths-info" and m == "POST":
            return self.paths_info(repo, rev, body)
        if what == "tree" and m == "GET":
            return self.tree(repo, rev, unquote(sub or ""), qs)
        if what.startswith("xet-"):
            return self.error(501, "Xet storage is not available on this local hub; set HF_HUB_DISABLE_XET=1",
                              req_body=body, head=head)
        return self.error(405, "Method not allowed", req_body=body, head=head)

    def repo_info(self, repo, rev):
        oid = self.store.resolve(repo, rev)
        if oid is None:
            return self.error(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        c = repo["commits"][oid]
        info = {
            "_id": hashlib.sha1(repo["id"].encode()).hexdigest()[:24], "id": repo["id"],
            "private": repo["private"], "sha": oid, "lastModified": c["date"], "disabled": False, "gated": False,
            "tags": [], "downloads": 0, "likes": 0,
            "siblings": [{"rfilename": f} for f in sorted(c["files"])],
        }
        if repo["type"] == "model":
            info["modelId"] = repo["id"]
        return self.send(200, info)

    def _tree_entry(self, path, e):
        d = {"type": "file", "oid": e["blob"], "size": e["size"], "path": path}
        if e["lfs"]:
            d["lfs"] = {"oid": e["sha256"], "size": e["size"], "pointerSize": 134}
        return d

    def tree(self, repo, rev, sub, qs):
        files = self.store.files_at(repo, rev)
        if files is None:
            return self.error(404, f"Invalid rev id: {rev}", code="RevisionNotFound")
        recursive = qs.get("recursive", ["false"])[0].lower() in ("1", "true")
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        out, dirs = [], set()
        for path in sorted(files):
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix):]
            if "/" in rel and not recursive:
                dirs.add(prefix + rel.split("/")[0])
                continue
            if recursive:
                parts = rel.split("/")[:-1]
                for i in range(len(parts)):
                    dirs.add(prefix + "/".join(parts[: i + 1]))
            out.append(self._tree_entry(path, files[path]))
        out = [{"type": "directory", "oid": "0" * 40, "size": 0, "path": d} for d in sorted(dirs)] + out
        return self.send(200, out)

    def paths_info(self, repo, rev, body):
        files = self.store.files_at(repo, rev)
        if files is None:
            return self.error(404, f"Invalid rev id: {rev}", code="RevisionNotFound", req_body=body)
        ctype = (self.headers.get("Content-Type") or "").split(";")[0]
        if ctype == "application/json":
            payload = json.loads(body or b"{}")
            paths = payload.get("paths", [])
        else:
            q = parse_qs(body.decode())
            paths = q.get("paths", [])
        out = [self._tree_entry(p, files[p]) for p in paths if p in files]
        return self.send(200, out, req_body=body)

    def preupload(self, repo, rev, qs, body):
        if not self.check_auth(body):
            return
        files = self.store.files_at(repo, rev)
        if files is None:
            return self.error(404, f"Invalid rev id: {rev}", code="RevisionNotFound", req_body=body)
        payload = json.loads(body or b"{}")
        if not isinstance(payload.get("files"), list):
            return self.error(400, "files must be an array", req_body=body)
        ga = payload.get("gitAttributes")
        if ga is None:
            ga = self.store.read_entry(files[".gitattributes"]).decode() if ".gitattributes" in files else ""
        gi = payload.get("gitIgnore")
        if gi is None:
            gi = self.store.read_entry(files[".gitignore"]).decode() if ".gitignore" in files else ""
        out = []
        for f in payload["files"]:
            path, size = f["path"], int(f["size"])
            sample = base64.b64decode(f.get("sample") or "")
            lfs = (
                is_lfs_tracked(ga, path)
                or size >= self.args.lfs_threshold
                or b"\x00" in sample
            )
            d = {"path": path, "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": is_ignored(gi, path)}
            if path in files:
                e = files[path]
                # oid of the existing remote file: sha256 for LFS files, git blob sha1 for regular ones
                d["oid"] = e["sha256"] if e["lfs"] else e["blob"]
            out.append(d)
        return self.send(200, {"files": out, "commitOid": self.store.resolve(repo, rev)}, req_body=body)

    def lfs_batch(self, repo_type, repo_id, body):
        if not self.check_auth(body):
            return
        repo = self.repo_or_404(repo_type, repo_id, body)
        if repo is None:
            return
        payload = json.loads(body or b"{}")
        if payload.get("operation") != "upload":
            return self.error(400, "only upload is supported here", req_body=body)
        transfers = payload.get("transfers") or ["basic"]
        base = self.base_url()
        prefix = REPO_TYPES[repo_type]
        objects = []
        use_multipart = False
        for o in payload.get("objects", []):
            oid, size = o["oid"], int(o["size"])
            obj = {"oid": oid, "size": size, "authenticated": True}
            if not re.fullmatch(r"[0-9a-f]{64}", oid):
                obj["error"] = {"code": 422, "message": "Invalid oid"}
            elif self.store.has_lfs(oid):
                pass  # already present: no "actions" => client skips the upload
            else:
                expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 86400))
                mp = (self.args.multipart_threshold and size >= self.args.multipart_threshold
                      and "multipart" in transfers)
                if mp:
                    use_multipart = True
                    cs = self.args.chunk_size
                    n = max(1, -(-size // cs))
                    header = {"chunk_size": str(cs)}
                    for i in range(1, n + 1):
                        header[f"{i:05d}"] = f"{base}/__lfs/part/{oid}/{i}?X-Amz-Signature=local"
                    upload = {"href": f"{base}/__lfs/complete/{oid}?uploadId=local", "header": header,
                              "expires_at": expires}
                else:
                    upload = {"href": f"{base}/__lfs/upload/{oid}?X-Amz-Signature=local", "expires_at": expires}
                obj["actions"] = {"upload": upload}
                if not self.args.no_verify:
                    obj["actions"]["verify"] = {
                        "href": f"{base}/{prefix}{repo_id}.git/info/lfs/objects/verify",
                        "header": {"Authorization": self.headers.get("Authorization", "")},
                        "expires_at": expires,
                    }
            objects.append(obj)
        resp = {"transfer": "multipart" if use_multipart else "basic", "objects": objects}
        return self.send(200, resp, ctype="application/vnd.git-lfs+json", req_body=body)

    def _store_lfs(self, oid, data_path, size=None):
        h = hashlib.sha256()
        n = 0
        with open(data_path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                n += len(chunk)
        if h.hexdigest() != oid:
            os.unlink(data_path)
            return f"sha256 mismatch: expected {oid}, got {h.hexdigest()}"
        os.replace(data_path, self.store.lfs_path(oid))
        return None

    def lfs_put(self, oid, body):
        tmp = os.path.join(self.store.root, "tmp", f"{oid}.{uuid.uuid4().hex}")
        with open(tmp, "wb") as f:
            f.write(body)
        err = self._store_lfs(oid, tmp)
        if err:
            return self.send(400, body=err.encode(), ctype="text/plain", req_body=body)
        etag = '"%s"' % hashlib.md5(body).hexdigest()
        return self.send(200, body=b"", ctype="text/plain", headers={"ETag": etag}, req_body=body)

    def lfs_put_part(self, oid, n, body):
        d = os.path.join(self.store.root, "tmp", f"parts-{oid}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"{n:05d}"), "wb") as f:
            f.write(body)
        etag = '"%s"' % hashlib.md5(body).hexdigest()
        return self.send(200, body=b"", ctype="text/plain", headers={"ETag": etag}, req_body=body)

    def lfs_complete(self, oid, body):
        payload = json.loads(body or b"{}")
        d = os.path.join(self.store.root, "tmp", f"parts-{oid}")
        parts = sorted(payload.get("parts", []), key=lambda x: x["partNumber"])
        tmp = os.path.join(self.store.root, "tmp", f"{oid}.{uuid.uuid4().hex}")
        with open(tmp, "wb") as out:
            for part in parts:
                pp = os.path.join(d, f"{int(part['partNumber']):05d}")
                with open(pp, "rb") as f:
                    data = f.read()
                if '"%s"' % hashlib.md5(data).hexdigest() != part["etag"]:
                    return self.error(400, f"etag mismatch for part {part['partNumber']}", req_body=body)
                out.write(data)
        err = self._store_lfs(oid, tmp)
        if err:
            return self.error(400, err, req_body=body)
        shutil.rmtree(d, ignore_errors=True)
        return self.send(200, {"success": True}, req_body=body)

    def lfs_verify(self, repo_type, repo_id, body):
        if not self.check_auth(body):
            return
        payload = json.loads(body or b"{}")
        oid, size = payload.get("oid"), payload.get("size")
        if not oid or not self.store.has_lfs(oid):
            return self.error(404, "Object not found", req_body=body)
        if size is not None and os.path.getsize(self.store.lfs_path(oid)) != int(size):
            return self.error(422, "Size mismatch", req_body=body)
        return self.send(200, {"success": True}, req_body=body)

    def commit(self, repo, rev, qs, body):
        if not self.check_auth(body):
            return
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip()
        if ctype == "application/x-ndjson":
            lines = [json.loads(l) for l in body.decode().splitlines() if l.strip()]
        elif ctype == "application/json":  # legacy JSON commit payload
            pl = json.loads(body)
            lines = [{"key": "header", "value": {"summary": pl.get("summary"), "description": pl.get("description", "")}}]
            lines += [{"key": "file", "value": v} for v in pl.get("files", [])]
            lines += [{"key": "lfsFile", "value": v} for v in pl.get("lfsFiles", [])]
            lines += [{"key": "deletedFile", "value": v} for v in pl.get("deletedFiles", [])]
        else:
            return self.error(400, f"Unsupported content-type {ctype!r}", req_body=body)
        if not lines or lines[0].get("key") != "header":
            return self.error(400, "First line must be the header", req_body=body)
        header = lines[0]["value"]
        if not header.get("summary"):
            return self.error(400, "summary is required", req_body=body)
        create_pr = qs.get("create_pr", ["0"])[0] in ("1", "true")
        with self.store.lock:
            base_oid = self.store.resolve(repo, rev)
            if base_oid is None:
                return self.error(404, f"Invalid rev id: {rev}", code="RevisionNotFound", req_body=body)
            parent = header.get("parentCommit")
            if parent and not create_pr and parent != base_oid:
                return self.error(412, "A commit has happened since. Please refresh and try again.", req_body=body)
            if parent and create_pr:
                base_oid = parent
            files = dict(repo["commits"][base_oid]["files"])
            new_lfs_paths = []
            for line in lines[1:]:
                k, v = line.get("key"), line.get("value") or {}
                path = v.get("path")
                if k == "file":
                    if "oldPath" in v and "content" not in v:
                        files[path] = files.pop(v["oldPath"])
                        continue
                    enc = v.get("encoding", "utf-8")
                    data = base64.b64decode(v["content"]) if enc == "base64" else v["content"].encode()
                    files[path] = {"lfs": False, "blob": self.store.put_blob(data), "size": len(data)}
                elif k == "lfsFile":
                    if "oldPath" in v and "oid" not in v:
                        files[path] = files.pop(v["oldPath"])
                        continue
                    if v.get("algo", "sha256") != "sha256":
                        return self.error(400, "algo must be sha256", req_body=body)
                    oid = v["oid"]
                    if not self.store.has_lfs(oid):
                        return self.error(
                            422, f"Your push was rejected because an LFS pointer pointed to a file that does not "
                                 f"exist. For instance: {path} (oid {oid})", req_body=body)
                    size = os.path.getsize(self.store.lfs_path(oid))
                    if v.get("size") is not None and int(v["size"]) != size:
                        return self.error(422, f"LFS size mismatch for {path}", req_body=body)
                    pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n").encode()
                    files[path] = {"lfs": True, "sha256": oid, "size": size, "blob": git_blob_sha1(pointer)}
                    new_lfs_paths.append(path)
                elif k == "deletedFile":
                    if path not in files:
                        return self.error(404, f"A file with this name doesn't exist: {path}", code="EntryNotFound",
                                          req_body=body)
                    files.pop(path)
                elif k == "deletedFolder":
                    pre = path.rstrip("/") + "/"
                    for f in [f for f in files if f.startswith(pre)]:
                        files.pop(f)
                else:
                    return self.error(400, f"Unknown key {k!r}", req_body=body)
            # Like the Hub: make sure LFS files are tracked in .gitattributes
            ga = self.store.read_entry(files[".gitattributes"]).decode() if ".gitattributes" in files else ""
            missing = [p for p in new_lfs_paths if not is_lfs_tracked(ga, p)]
            if missing:
                if ga and not ga.endswith("\n"):
                    ga += "\n"
                ga += "".join(f"{p} filter=lfs diff=lfs merge=lfs -text\n" for p in missing)
                data = ga.encode()
                files[".gitattributes"] = {"lfs": False, "blob": self.store.put_blob(data), "size": len(data)}
            oid = self.store._add_commit(repo, base_oid, header["summary"], header.get("description", ""), files,
                                         self.args.user)
            prefix = f"{self.base_url()}/{REPO_TYPES[repo['type']]}{repo['id']}"
            resp = {"success": True, "commitOid": oid, "commitUrl": f"{prefix}/commit/{oid}", "hookOutput": ""}
            if create_pr:
                num = 1 + sum(1 for b in repo["branches"] if b.startswith("refs/pr/"))
                branch = f"refs/pr/{num}"
                repo["branches"][branch] = oid
                resp["pullRequestUrl"] = f"{prefix}/discussions/{num}"
            else:
                branch = unquote(rev)
                if branch not in repo["branches"]:
                    return self.error(400, f"Cannot commit to {branch}: not a branch", req_body=body)
                repo["branches"][branch] = oid
            self.store.save()
            self.store._checkout(repo, branch)
        return self.send(200, resp, req_body=body)

    def resolve_file(self, repo_type, repo_id, rev, path, head):
        repo = self.repo_or_404(repo_type, repo_id, head=head)
        if repo is None:
            return
        oid = self.store.resolve(repo, rev)
        if oid is None:
            return self.error(404, f"Invalid rev id: {rev}", code="RevisionNotFound", head=head)
        files = repo["commits"][oid]["files"]
        if path not in files:
            return self.error(404, "Entry not found", code="EntryNotFound", head=head)
        e = files[path]
        headers = {"X-Repo-Commit": oid, "Accept-Ranges": "bytes"}
        if e["lfs"]:
            headers["ETag"] = f'"{e["sha256"]}"'
            headers["X-Linked-Etag"] = f'"{e["sha256"]}"'
            headers["X-Linked-Size"] = str(e["size"])
        else:
            headers["ETag"] = f'"{e["blob"]}"'
        data_path = self.store.blob_path(e)
        size = os.path.getsize(data_path)
        start, end, status = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng:
            mm = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if mm:
                if mm.group(1):
                    start = int(mm.group(1))
                    end = int(mm.group(2)) if mm.group(2) else size - 1
                else:
                    start = max(0, size - int(mm.group(2)))
                end = min(end, size - 1)
                if start > end and size > 0:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    self.record(b"", 416, None)
                    return
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        ctype = "application/json" if path.endswith(".json") else (
            "text/plain; charset=utf-8" if not e["lfs"] else "application/octet-stream")
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(length))
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            with open(data_path, "rb") as f:
                f.seek(start)
                remaining = length
                while remaining > 0:
                    chunk = f.read(min(1 << 20, remaining))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    remaining -= len(chunk)
        self.record(b"", status, None)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8123)
    ap.add_argument("--log", default="requests.jsonl", help="JSONL request log (appended)")
    ap.add_argument("--store", default="hub_store", help="directory keeping repos and uploaded files")
    ap.add_argument("--token", default=None, help="if set, only this Bearer token is accepted")
    ap.add_argument("--user", default="someone", help="user name answered by whoami / default namespace")
    ap.add_argument("--public-url", default=None, help="base URL used in returned hrefs (default: from Host)")
    ap.add_argument("--lfs-threshold", type=int, default=10 * 1024 * 1024,
                    help="preupload: files of at least this size are 'lfs' (default 10 MiB)")
    ap.add_argument("--multipart-threshold", type=int, default=0,
                    help="LFS batch: objects of at least this size get the HF multipart transfer (0 = never)")
    ap.add_argument("--chunk-size", type=int, default=8 * 1024 * 1024, help="multipart part size")
    ap.add_argument("--no-verify", action="store_true", help="don't return a verify action")
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args(argv)

    Handler.store = Store(args.store)
    Handler.args = args
    srv = ThreadingHTTPServer((args.host, args.port), Handler)
    srv.daemon_threads = True
    print(f"local hub listening on http://{args.host}:{srv.server_address[1]} store={Handler.store.root} "
          f"log={args.log}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
