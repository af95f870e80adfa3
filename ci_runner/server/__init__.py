"""`ci-runner serve`: forges' webhooks in, durable CI runs out, one tenant per repository.

    config.py      the YAML config, checked whole at start
    forges.py      per-forge signatures and payloads -> one ``Delivery``
    intake.py      authenticate, decide, commit durably (grouped) before the 2xx
    app.py         FastAPI: /hooks/<forge>, /health, the token API
    dispatcher.py  deliveries -> runs (mirror fetch, fork), drivers within the limits
    gate.py        the loader of fork pull requests: approval first, no secrets, no network
    status.py      commit statuses back to the forge, retried, never failing a run
    lifecycle.py   start (recovery), SIGTERM (drain, grace, leave the rest)

The web view of runs (also served alone by `ci-runner ui`):

    pages.py       the pages and their live streams (templates/, static/)
    pageaccess.py  who looks (team or local), what they see and may do: the API's data
    sessions.py    sign-in with a token -> signed session cookie; CSRF and origin checks
    live.py        one SSE stream per page: database changes noticed, logs tailed
    ansi.py        a log's terminal colours as HTML, fed in chunks
"""
