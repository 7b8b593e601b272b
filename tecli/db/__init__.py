"""The results database: schema, storage, a run's life, liveness and migrations."""
