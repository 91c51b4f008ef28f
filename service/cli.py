"""`serve`: the prediction server (uvicorn) for one or more trained heads."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from extractor import console

EPILOG = """\
Every option can also be set in the environment or a .env file as FEATCACHE_<NAME>
(FEATCACHE_HEADS=heads/a,heads/b, FEATCACHE_PORT, FEATCACHE_API_KEY, FEATCACHE_PRECISION,
FEATCACHE_MAX_BATCH_SIZE, FEATCACHE_MAX_WAIT_MS, FEATCACHE_FEATURE_CACHE_BYTES,
FEATCACHE_MAX_UPLOAD_BYTES, FEATCACHE_MAX_IMAGE_PIXELS, FEATCACHE_DECODE_CONCURRENCY,
FEATCACHE_MAX_QUEUE, FEATCACHE_REQUEST_TIMEOUT_S, FEATCACHE_MAX_BODY_BYTES_IN_FLIGHT,
FEATCACHE_BODY_TIMEOUT_S, FEATCACHE_TTA, ...); options given here win.
The API key is read from the environment (or FEATCACHE_API_KEY_FILE) only, never from the
command line, where other users could see it.

Endpoints: POST /predict, POST /predict/batch, GET /heads, POST /admin/reload, GET /metrics,
GET /health, GET /ready, the Open Inference Protocol (KServe V2, as Triton's clients speak it)
under /v2, and the OpenAPI docs at /docs. With no API key set, POST /admin/reload answers only
clients on loopback.

Heads folder: --heads-dir DIR serves every DIR/NAME/VERSION/ (or DIR/NAME/) head folder and
picks up new, replaced and removed ones while serving: it is rescanned every --heads-poll-s
seconds, on SIGHUP, and on POST /admin/reload. --head heads are fixed: loaded once, never
reloaded; both may be given (a name in both is served from --head).

Exit status: 0 after a clean shutdown (Ctrl-C once it listens: the normal way to stop a
server), 1 when the heads or the model cannot be loaded, 2 for bad arguments, 130 when
interrupted while starting, before it listens. No --json: serve prints no end-of-run summary;
GET /heads and GET /metrics are its machine-readable output.
"""


def build_parser(prog: str = "serve") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Serve trained heads over HTTP: image in, label and probabilities out.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--head", dest="heads", action="append", type=Path, metavar="DIR",
                   help="head folder written by train-head; repeat to serve several (the first "
                   "is the default)")
    p.add_argument("--heads-dir", type=Path, metavar="DIR",
                   help="folder of heads to serve and watch: DIR/NAME/VERSION/ or DIR/NAME/")
    p.add_argument("--heads-poll-s", type=float, metavar="SECONDS",
                   help="how often to rescan --heads-dir (default: 2; 0: only on SIGHUP and "
                   "POST /admin/reload)")
    p.add_argument("--default-head", metavar="NAME",
                   help="the head a request without ?head= gets (default: the first --head, or "
                   "the only head in --heads-dir)")
    p.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default: 8000)")
    p.add_argument("--weights", help="'imagenet' or a path to the VGG16 no-top weights "
                   "(default: $FEATCACHE_WEIGHTS, else imagenet)")
    p.add_argument("--precision", choices=["fp32", "int8"],
                   help="conv base arithmetic: fp32 (default), or int8 for heads trained on int8 "
                   "features (extract --precision int8); a head of the other precision is "
                   "refused (default: $FEATCACHE_PRECISION, else fp32)")
    p.add_argument("--max-batch-size", type=int, help="most images per forward pass")
    p.add_argument("--max-wait-ms", type=float,
                   help="how long to wait for more images to fill a batch")
    p.add_argument("--feature-cache-bytes", type=int,
                   help="bytes of features kept in memory (default 256 MiB; 0 disables the cache)")
    p.add_argument("--feature-cache-size", type=int,
                   help="deprecated: a cap on the number of images in the feature cache, on top "
                   "of --feature-cache-bytes (0 disables the cache)")
    p.add_argument("--no-tta", dest="tta", action="store_const", const=False,
                   help="predict from each upload alone, even for heads trained on augmented "
                   "views (default: average over the same views, K+1 forward passes per new "
                   "image; FEATCACHE_TTA)")
    p.add_argument("--no-warmup", dest="warmup", action="store_const", const=False,
                   help="skip the warm-up forward pass before reporting ready")
    p.add_argument("--no-ui", dest="ui", action="store_const", const=False,
                   help="no try-it page at / (default: served, open without the API key; "
                   "FEATCACHE_UI=false)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"],
                   help="log records at this level and above (default: info; FEATCACHE_LOG_LEVEL)")
    console.add_common(p, quiet_help="errors only in the log (--log-level error)")
    return p


def main(argv: list[str] | None = None, prog: str = "serve") -> int:
    return console.run(prog, lambda: _main(argv, prog), interrupted="stopped before serving")


def _main(argv: list[str] | None, prog: str) -> int:
    parser = build_parser(prog)
    console.complete(parser)
    args = parser.parse_args(argv)
    quiet = args.quiet
    del args.quiet
    if quiet and args.log_level is None:
        args.log_level = "error"
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}

    from pydantic import ValidationError

    from service.config import Settings

    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        print(f"{prog}: error: invalid settings: {problems}", file=sys.stderr)
        return 2
    if not settings.heads and settings.heads_dir is None:
        print(f"{prog}: error: no head to serve; pass --head heads/NAME or --heads-dir DIR (or "
              "set FEATCACHE_HEADS or FEATCACHE_HEADS_DIR)", file=sys.stderr)
        return 2

    refusal = _keras_refusal(settings.heads)
    if refusal:
        print(f"{prog}: error: {refusal}", file=sys.stderr)
        return 1

    console.setup_logging(settings.log_level, timestamps=True)

    import uvicorn

    from service.app import create_app

    failures: list[BaseException] = []
    server: uvicorn.Server | None = None

    def stop_on_failure(exc: BaseException) -> None:
        failures.append(exc)
        if server is not None:
            server.should_exit = True

    app = create_app(settings, on_load_failure=stop_on_failure, reload_on_sighup=True)
    config = uvicorn.Config(app, host=settings.host, port=settings.port,
                            log_level=settings.log_level.lower(), log_config=None,
                            timeout_graceful_shutdown=10)
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit as exc:  # uvicorn exits 3 when the lifespan start-up fails
        if exc.code not in (0, None):
            return 1
    except KeyboardInterrupt:
        # uvicorn shut down gracefully on Ctrl-C, then re-raised it for us: a clean stop.
        if not server.started:
            raise
    if failures or not server.started:
        # The lifespan has logged why (a bad head, a spec mismatch, missing weights).
        return 1
    return 0


def _keras_refusal(heads: list[Path]) -> str | None:
    """A --head that is a Keras head where Keras is not installed (the lean serving image),
    refused before the server starts: one line that names the image to use, rather than the
    start-up traceback uvicorn prints for a failing lifespan. (The app refuses it too, for
    callers of create_app; a Keras head in --heads-dir is reported "failed" by /heads.)"""
    from service.heads import keras_refusal

    for head in heads:
        try:
            refusal = keras_refusal(head)
        except (ValueError, OSError):
            continue  # not a head folder: the start-up says so, as ever
        if refusal is not None:
            return f"cannot serve head {str(head)!r}: {refusal}"
    return None


if __name__ == "__main__":
    sys.exit(main())
