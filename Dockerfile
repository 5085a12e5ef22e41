# One image for every Modcus process. The default command starts the API, and
# docker-compose.yml overrides it for the worker, beat and the migration.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

RUN groupadd --system --gid 10001 modcus \
    && useradd --system --uid 10001 --gid modcus --create-home --home-dir /home/modcus modcus

WORKDIR /src

# The runtime dependencies get their own layer, which is rebuilt only when
# pyproject.toml changes. The dev extras are not installed.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# A regular, non-editable install. The source tree is removed afterwards so that
# uvicorn and celery, which put the working directory on sys.path, import the
# installed packages, including the Alembic scripts in the migrations package.
# The anthropic extra is included, so that Anthropic keys work in the container.
COPY . .
RUN pip install '.[anthropic]' \
    && cd / \
    && rm -rf /src

WORKDIR /home/modcus
# A numeric user, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

EXPOSE 8000
CMD ["uvicorn", "api.main:app", "--host", "0.0.0.0", "--port", "8000"]
