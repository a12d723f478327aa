# The demo shop (or your shop, built the same way) for production: gunicorn serves the web
# app, the same image runs the Celery workers. Configuration comes from the environment.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    DJANGO_SETTINGS_MODULE=shop_demo.settings DJANGO_DEBUG=0 \
    DJANGO_STATIC_ROOT=/srv/static DJANGO_MEDIA_ROOT=/srv/media \
    VISUAL_SEARCH_CACHE_DIR=/srv/cache

# CPU wheels of torch are enough for inference; pass --build-arg TORCH_INDEX=<url> to pick
# another torch build (for GPU workers, use a CUDA base image and index).
ARG TORCH_INDEX=""
RUN pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "torch>=2.4" "torchvision>=0.19"

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY visual_search ./visual_search
RUN pip install ".[celery,api]" "gunicorn>=22"
COPY shop_demo ./shop_demo
COPY manage.py ./

RUN useradd --create-home --uid 1000 shop && mkdir -p /srv/static /srv/media /srv/cache \
    && DATABASE_URL=postgresql://build@localhost/build CELERY_BROKER_URL=redis://localhost \
       DJANGO_SECRET_KEY=build python manage.py collectstatic --noinput \
    && chown -R shop /srv
USER shop
EXPOSE 8000
CMD ["gunicorn", "shop_demo.wsgi:application", "--bind", "0.0.0.0:8000", "--workers", "3", "--timeout", "60"]
