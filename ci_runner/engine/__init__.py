"""A generic durable workflow engine: instances, a step journal with replay, retries,
timers, events and leases, stored in SQLite. It knows nothing of git or CI."""
