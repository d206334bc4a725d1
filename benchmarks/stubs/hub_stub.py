"""A loopback stand-in for the Hugging Face hub's file downloads (HF_ENDPOINT), as `huggingface_hub` reads them.

HEAD and GET /{repo_id}/resolve/{revision}/{filename}: 200 with the headers `hf_hub_download` requires
(`X-Repo-Commit`: the 40-hex commit, else it refuses the file as not from the hub; `ETag`; `Content-Length`),
the file on GET. A gated repository without an Authorization header: 401, `X-Error-Code: GatedRepo`; an
unknown repository: 401 `X-Error-Code: RepoNotFound` (what the hub answers for a repository that does not
exist or is private); a file the repository does not hold: 404, `X-Error-Code: EntryNotFound`. It counts the
requests per path.
"""

from __future__ import annotations

import hashlib
from collections import Counter

from aiohttp import web

from benchmarks.stubs.threaded import AiohttpServer


class HubStub(AiohttpServer):
    def __init__(self, files: dict[str, dict[str, bytes]], gated: set[str] = frozenset()) -> None:
        self.files, self.gated = files, set(gated)
        self.requests: Counter[str] = Counter()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def resolve(self, request: web.Request) -> web.StreamResponse:
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        name, revision = request.match_info["filename"], request.match_info["revision"]
        self.requests[request.path] += 1
        if repo in self.gated and "authorization" not in request.headers:
            return web.Response(status=401, headers={"X-Error-Code": "GatedRepo",
                                                     "X-Error-Message": "Access to model is restricted."})
        if repo not in self.files:
            return web.Response(status=401, headers={"X-Error-Code": "RepoNotFound",
                                                     "X-Error-Message": "Repository not found"})
        if name not in self.files[repo]:
            return web.Response(status=404, headers={"X-Error-Code": "EntryNotFound",
                                                     "X-Error-Message": "Entry not found"})
        body = self.files[repo][name]
        headers = {"X-Repo-Commit": hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest(),
                   "ETag": f'"{hashlib.sha256(body).hexdigest()}"', "Content-Length": str(len(body)),
                   "Content-Type": "application/json"}
        if request.method == "HEAD":
            return web.Response(status=200, headers=headers)
        return web.Response(status=200, body=body, headers={k: v for k, v in headers.items()
                                                            if k != "Content-Length"})

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.route("*", "/{org}/{name}/resolve/{revision}/{filename}", self.resolve)])
        return app
