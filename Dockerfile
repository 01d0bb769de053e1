# Production image: `manage.py serve` runs uvicorn or daphne (RTP_ASGI_SERVER) for HTTP + WebSocket;
# the same image runs the Celery worker and beat.
FROM python:3.11-slim AS base

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RTP_VAR_DIR=/var/lib/rtp

WORKDIR /app
COPY requirements/base.txt requirements/base.txt
RUN pip install -r requirements/base.txt

COPY . .
RUN useradd --system --uid 10001 --home /app rtp \
 && mkdir -p /var/lib/rtp && chown rtp /var/lib/rtp \
 && DJANGO_SECRET_KEY=build-only DJANGO_DEBUG=false python manage.py collectstatic --noinput -v0 \
 && chown -R rtp /var/lib/rtp
USER rtp

EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s \
  CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4).status == 200 else 1)"
ENV RTP_ASGI_SERVER=uvicorn
CMD ["python", "manage.py", "serve", "--no-worker", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
