"""``python -m backend``: serve the API on DORA_API_HOST:DORA_API_PORT (127.0.0.1:8000).

Refuses to listen beyond loopback without DORA_API_TOKEN, since anyone who
can reach the port could otherwise launch jobs and delete runs.
"""

from __future__ import annotations

import sys

import uvicorn

from backend.settings import Settings, SettingsError, exposure_error


def main() -> int:
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    refusal = exposure_error(settings.host, settings.api_token)
    if refusal:
        print(f"error: {refusal}", file=sys.stderr)
        return 2
    from backend.main import create_app

    # Live streams (SSE) stay open until their run ends; shutdown does not wait for them.
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
