# One image for every ShiftScore process: api, worker, scheduler, migrate.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
# bubblewrap cages every uploaded model (worker/sandbox); libseccomp2 is its seccomp filter.
RUN apt-get update && apt-get install -y --no-install-recommends bubblewrap libseccomp2 \
    && rm -rf /var/lib/apt/lists/*
# The CPU build of torch: the default index would pull a multi-GB CUDA build.
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY api ./api
# api/static/metrics.md links to it: the docs served at /docs/metrics.
COPY docs/metrics.md ./docs/metrics.md
COPY core ./core
COPY worker ./worker
COPY db ./db
COPY launcher ./launcher
COPY shiftscore ./shiftscore
RUN pip install '.[server,worker]'
RUN useradd --create-home shiftscore
USER shiftscore
ENV SHIFTSCORE_HOME=/home/shiftscore
EXPOSE 8000
CMD ["shiftscore", "api", "--host", "0.0.0.0"]
