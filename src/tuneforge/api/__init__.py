"""The REST API (FastAPI): `create_app(settings)`; `tuneforge server` runs it with uvicorn beside its workers."""
