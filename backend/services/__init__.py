"""Business logic on database sessions; no FastAPI here (routers adapt it to HTTP)."""
