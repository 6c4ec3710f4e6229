"""`python -m cosyvoice jobs submit|list|show|wait|download|cancel|pause|resume|regenerate` — a client of a
running server's /v1/jobs API (the server owns the job database; any instance of it will do).

    python -m cosyvoice jobs submit book.txt --voice narrator      # .txt .csv .srt .jsonl
    python -m cosyvoice jobs wait JOB_ID
    python -m cosyvoice jobs download JOB_ID --format zip --out book.zip
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cosyvoice.settings import env_value

FINAL = ("done", "done_with_failures", "failed", "cancelled")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m cosyvoice jobs", description="Long-form and batch jobs.")
    parser.add_argument("--url", default=env_value("COSYVOICE_URL", "http://127.0.0.1:7860"),
                        help="the server (or env COSYVOICE_URL)")
    parser.add_argument("--api-key", default=env_value("COSYVOICE_API_KEY"))
    # --url and --api-key are taken before or after the command (given after, they win).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=argparse.SUPPRESS)
    common.add_argument("--api-key", default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", required=True)
    add = lambda name, **kw: commands.add_parser(name, parents=[common], **kw)   # noqa: E731
    submit = add("submit", help="submit a .txt/.csv/.srt/.jsonl file as a job")
    submit.add_argument("file", type=Path)
    submit.add_argument("--voice", help="a saved voice for lines that name none")
    submit.add_argument("--instructions", default=None)
    submit.add_argument("--seed", type=int, default=None)
    submit.add_argument("--speed", type=float, default=None)
    submit.add_argument("--gap-ms", type=float, default=None, help="silence between lines in the stitched track")
    submit.add_argument("--wait", action="store_true", help="then wait for it to finish")
    add("list", help="recent jobs")
    for name in ("show", "wait", "cancel", "pause", "resume"):
        add(name).add_argument("job_id")
    download = add("download", help="the result: zip (default), wav, srt, vtt or jsonl")
    download.add_argument("job_id")
    download.add_argument("--format", default="zip", choices=("zip", "wav", "srt", "vtt", "jsonl"))
    download.add_argument("--out", type=Path, help="file to write (default <job id>.<format>)")
    regenerate = add("regenerate", help="voice one line again (new seed, or new text)")
    regenerate.add_argument("job_id")
    regenerate.add_argument("custom_id")
    regenerate.add_argument("--text")
    regenerate.add_argument("--seed", type=int)
    return parser


def _call(client, method: str, path: str, **kwargs):
    response = client.request(method, path, **kwargs)
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text[:300]
        raise SystemExit(f"error: {message}")
    return response


def _summary(view: dict) -> str:
    p = view["progress"]
    eta = f", about {view['eta_s']:.0f} s left" if view.get("eta_s") else ""
    return (f"{view['id']}  {view['state']}  {p['done']}/{p['total']} done, {p['failed']} failed, "
            f"{p['pending'] + p['running']} to go{eta}")


def _wait(client, job_id: str) -> int:
    last = ""
    while True:
        view = _call(client, "GET", f"/v1/jobs/{job_id}", params={"lines": "false"}).json()
        line = _summary(view)
        if line != last:
            print(line, file=sys.stderr)
            last = line
        if view["state"] in FINAL:
            for misfit in view["misfits"]:
                print(f"note: line {misfit['custom_id']} is {misfit['misfit_s']:.2f} s longer than its slot",
                      file=sys.stderr)
            return 0 if view["state"] == "done" else 1
        time.sleep(1.0)


def _submit(client, args) -> int:
    if not args.file.is_file():
        print(f"error: file not found: {args.file}", file=sys.stderr)
        return 1
    fields = {key: str(value) for key, value in (("voice", args.voice), ("instructions", args.instructions),
                                                 ("seed", args.seed), ("speed", args.speed),
                                                 ("gap_ms", args.gap_ms)) if value is not None}
    with open(args.file, "rb") as handle:
        view = _call(client, "POST", "/v1/jobs", files={"file": (args.file.name, handle)}, data=fields).json()
    print(view["id"])
    print(f"{view['progress']['total']} line(s) from {args.file.name}", file=sys.stderr)
    return _wait(client, view["id"]) if args.wait else 0


def main(argv: list[str]) -> int:
    import httpx

    args = _parser().parse_args(argv)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        with httpx.Client(base_url=args.url, headers=headers, timeout=120) as client:
            return _run(client, args)
    except httpx.HTTPError as err:
        print(f"error: cannot reach {args.url} ({err}). Is the server running? Set --url or COSYVOICE_URL.",
              file=sys.stderr)
        return 1


def _run(client, args) -> int:
    if args.command == "submit":
        return _submit(client, args)
    if args.command == "list":
        for job in _call(client, "GET", "/v1/jobs").json()["data"]:
            print(f"{job['id']}  {job['state']:<18} {job['total']:>5} lines  {job['name']}")
        return 0
    if args.command == "show":
        view = _call(client, "GET", f"/v1/jobs/{args.job_id}").json()
        print(json.dumps(view, ensure_ascii=False, indent=1))
        return 0
    if args.command == "wait":
        return _wait(client, args.job_id)
    if args.command in ("cancel", "pause", "resume"):
        print(_summary(_call(client, "POST", f"/v1/jobs/{args.job_id}/{args.command}").json()))
        return 0
    if args.command == "regenerate":
        body = {key: value for key, value in (("text", args.text), ("seed", args.seed)) if value is not None}
        _call(client, "POST", f"/v1/jobs/{args.job_id}/lines/{args.custom_id}/regenerate", json=body)
        print(f"line {args.custom_id} queued again")
        return 0
    target = args.out or Path(f"{args.job_id}.{args.format}")
    response = _call(client, "GET", f"/v1/jobs/{args.job_id}/result", params={"format": args.format})
    from cosyvoice.ops.atomic import atomic_file

    with atomic_file(target) as handle:
        handle.write(response.content)
    print(target)
    return 0
