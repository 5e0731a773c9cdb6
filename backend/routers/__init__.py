"""One APIRouter per resource; main.py mounts them under /api."""
