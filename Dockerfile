# The single-process vitkit server: `docker build -t vitkit-serve .` then
#   docker run -p 8000:8000 -v $PWD/runs/my-model/bundle:/models/main:ro vitkit-serve
# (or mount a YAML config and pass its path as the command). A CPU-only PyTorch keeps the
# image small; drop the index URL to use a CUDA build.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN pip install torch torchvision --index-url https://download.pytorch.org/whl/cpu

WORKDIR /app
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install '.[serve,postgres]' && useradd --system --uid 10001 vitkit

USER vitkit
WORKDIR /data
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s --start-period=60s \
  CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz').status != 200)"
ENTRYPOINT ["vitkit", "serve", "--host", "0.0.0.0", "--port", "8000", "--log-db", "sqlite:////data/serve-requests.db"]
CMD ["/models/main"]
