"""Telemetry API and job launcher (FastAPI + SQLAlchemy)."""
