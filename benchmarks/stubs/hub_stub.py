"""A loopback stand-in for the Hugging Face hub's file downloads (HF_ENDPOINT), as `huggingface_hub` reads them.

HEAD and GET /{repo_id}/resolve/{revision}/{filename}: 200 with the headers `hf_hub_download` requires
(`X-Repo-Commit`: the 40-hex commit, else it refuses the file as not from the hub; `ETag`; `Content-Length`),
the file on GET. A gated repository without an Authorization header: 401, `X-Error-Code: GatedRepo`; an
unknown repository: 401 `X-Error-Code: RepoNotFound` (what the hub answers for a repository that does not
exist or is private); a file the repository does not hold: 404, `X-Error-Code: EntryNotFound`. It counts the
requests per path.

GET /api/models/{repo_id}[/revision/{revision}] (`HfApi.model_info`): the repository's metadata, `siblings`
with each file's `rfilename`, and with `?blobs=True` (`files_metadata=True`) its `size`, `blobId` and, for a
file over 10 MB, `lfs` ({size, sha256, pointerSize}), as the hub answers. A gated repository's metadata and
listing are public (`gated: "manual"`); an unknown one is the same 401 `RepoNotFound`. `listed` adds files
that appear in listings by size only (weights too large to hold; a GET of one is 404).
"""

from __future__ import annotations

import hashlib
from collections import Counter

from aiohttp import web

from benchmarks.stubs.threaded import AiohttpServer


class HubStub(AiohttpServer):
    def __init__(self, files: dict[str, dict[str, bytes]], gated: set[str] = frozenset(),
                 listed: dict[str, dict[str, int]] | None = None) -> None:
        self.files, self.gated, self.listed = files, set(gated), listed or {}
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
        if repo not in self.files and repo not in self.listed:
            return web.Response(status=401, headers={"X-Error-Code": "RepoNotFound",
                                                     "X-Error-Message": "Repository not found"})
        if name not in self.files.get(repo, {}):
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

    async def model_info(self, request: web.Request) -> web.Response:
        repo = f"{request.match_info['org']}/{request.match_info['name']}"
        self.requests[request.path] += 1
        if repo not in self.files and repo not in self.listed:
            return web.Response(status=401, headers={"X-Error-Code": "RepoNotFound",
                                                     "X-Error-Message": "Repository not found"})
        revision = request.match_info.get("revision", "main")
        blobs = request.query.get("blobs", "").lower() in ("1", "true")
        sizes = {**{name: len(body) for name, body in self.files.get(repo, {}).items()}, **self.listed.get(repo, {})}
        siblings = []
        for name, size in sizes.items():
            sibling: dict = {"rfilename": name}
            if blobs:
                blob = hashlib.sha1(f"{repo}/{name}".encode()).hexdigest()
                sibling.update(size=size, blobId=blob)
                if size > 10 * 2**20:
                    sibling["lfs"] = {"size": size, "sha256": hashlib.sha256(blob.encode()).hexdigest(),
                                      "pointerSize": 135}
            siblings.append(sibling)
        return web.json_response({"_id": hashlib.sha1(repo.encode()).hexdigest()[:24], "id": repo, "modelId": repo,
                                  "sha": hashlib.sha1(f"{repo}@{revision}".encode()).hexdigest(), "private": False,
                                  "gated": "manual" if repo in self.gated else False, "disabled": False,
                                  "tags": [], "siblings": siblings})

    def app(self) -> web.Application:
        app = web.Application()
        app.add_routes([web.route("*", "/{org}/{name}/resolve/{revision}/{filename}", self.resolve),
                        web.get("/api/models/{org}/{name}", self.model_info),
                        web.get("/api/models/{org}/{name}/revision/{revision}", self.model_info)])
        return app
