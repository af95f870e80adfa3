"""`ci-runner serve`: forges' webhooks in, durable CI runs out, one tenant per repository.

    config.py      the YAML config, checked whole at start
    forges.py      per-forge signatures and payloads -> one ``Delivery``
    intake.py      authenticate, decide, commit durably (grouped) before the 2xx
    app.py         FastAPI: /hooks/<forge>, /health, the token API
    dispatcher.py  deliveries -> runs (mirror fetch, fork), drivers within the limits
    gate.py        the loader of fork pull requests: approval first, no secrets, no network
    status.py      commit statuses back to the forge, retried, never failing a run
    lifecycle.py   start (recovery), SIGTERM (drain, grace, leave the rest)
"""
