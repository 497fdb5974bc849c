"""The service database: one schema (`schema.py`), its engine setup (`engine.py`) and its Alembic migrations
(`migrations/`, applied by `migrate.upgrade` whenever a service process opens the database).

This package sits below both the job store (`jobs/`) and the deployments (`serve/`), which share one database.
"""
