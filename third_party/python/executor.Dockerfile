# The executor image of --config=rbe: Debian's Python 3.11 (the toolchain's /usr/bin/python3.11)
# and the pinned lock installed as a pip store at the path the actions read it from,
# /opt/modelgate/pip-store/<key>/{site,dists,COMPLETE}, the layout and key of the machine's store
# (third_party/python/repositories.bzl; tests/rules:executor_image_test checks that they agree).
#
# Build it from the repository's root, tagged as @pip//executor:platform's container-image says
# (bazel-<workspace>/external/pip/executor/BUILD.bazel, IMAGE):
#
#   key=$(/usr/bin/python3.11 -S third_party/python/store_key.py third_party/requirements_lock.txt cpu 2)
#   docker build -f third_party/python/executor.Dockerfile --build-arg FLAVOR=cpu \
#     -t REGISTRY/modelgate-executor:cpu-$key . && docker push REGISTRY/modelgate-executor:cpu-$key
#
# FLAVOR=cuda installs third_party/requirements_lock_cuda.txt (the GPU pool's image).
FROM debian:bookworm-slim

ARG FLAVOR=cpu
# The store's format: _STORE_FORMAT in third_party/python/repositories.bzl.
ARG STORE_FORMAT=2

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/*

COPY third_party/requirements_lock.txt third_party/requirements_lock_cuda.txt /src/third_party/
COPY third_party/python/store_key.py third_party/python/pip_generate.py /src/third_party/python/

# The same steps as the repository rule's _install and _publish: pip without dependencies by hash,
# byte-compiled with paths relative to the store, each distribution's files on their own in dists/
# (hard links), read-only, COMPLETE last.
RUN set -eu; \
    case "$FLAVOR" in cpu) lock=/src/third_party/requirements_lock.txt ;; \
                      cuda) lock=/src/third_party/requirements_lock_cuda.txt ;; \
                      *) echo "FLAVOR=$FLAVOR: expected cpu or cuda" >&2; exit 1 ;; esac; \
    key=$(/usr/bin/python3.11 -S /src/third_party/python/store_key.py "$lock" "$FLAVOR" "$STORE_FORMAT"); \
    store=/opt/modelgate/pip-store/$key; \
    mkdir -p "$store"; cd "$store"; \
    /usr/bin/python3.11 -m pip install --no-deps --require-hashes --no-compile --no-input \
      --disable-pip-version-check --target site -r "$lock"; \
    /usr/bin/python3.11 -S -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$store/site" -p site site || true; \
    /usr/bin/python3.11 -S /src/third_party/python/pip_generate.py split site dists; \
    chmod -R a-w site; \
    touch COMPLETE; \
    echo "$key" >/opt/modelgate/pip-store/KEY

# Actions run as whatever user the engine picks; they only read the store.
WORKDIR /tmp
