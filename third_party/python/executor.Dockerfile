# The executor image of --config=rbe: Debian's Python 3.11 (the toolchain's /usr/bin/python3.11)
# and the pinned lock installed as a pip store at the path the actions read it from,
# /opt/modelgate/pip-store/<key>/{site,dists,entries,COMPLETE}, the layout and key of the machine's
# store (third_party/python/repositories.bzl; third_party/python:executor_image_test checks that
# they agree). entries/<sha256 of a package's lock entry> is how an action finds a package: its
# inputs are its packages' lock entries, not their files.
#
# Build it from the repository's root, tagged as @pip//executor:platform's container-image says
# (bazel-<workspace>/external/pip/executor/IMAGE: <flavor>-python<version>-store<format>):
#
#   docker build -f third_party/python/executor.Dockerfile --build-arg FLAVOR=cpu \
#     -t REGISTRY/modelgate-executor:cpu-python3.11.2-store2 . && docker push ...
#
# The tag does not name the lock: rebuilt from an edited lock and pushed under the same tag, the
# image serves every action whose packages' entries did not change (their keys did not either),
# and an action whose entry the image lacks fails with exit 70, naming the package. To keep
# serving a second lock (a release branch), build on the previous image: --build-arg
# BASE=REGISTRY/modelgate-executor:<tag> adds this lock's store beside the ones it holds.
#
# FLAVOR=cuda installs third_party/requirements_lock_cuda.txt (the GPU pool's image).
ARG BASE=debian:bookworm-slim
FROM ${BASE}

ARG FLAVOR=cpu
# The store's format: _STORE_FORMAT in third_party/python/repositories.bzl.
ARG STORE_FORMAT=2

RUN command -v python3.11 >/dev/null || { apt-get update \
 && apt-get install -y --no-install-recommends python3.11 python3-pip ca-certificates \
 && rm -rf /var/lib/apt/lists/*; }

COPY third_party/requirements_lock.txt third_party/requirements_lock_cuda.txt /src/third_party/
COPY third_party/python/store_key.py third_party/python/pip_generate.py /src/third_party/python/

# The same steps as the repository rule's _install and _publish: pip without dependencies by hash,
# byte-compiled with paths relative to the store, each distribution's files on their own in dists/
# (hard links), read-only, COMPLETE; then the index by lock entry (entries/<sha256>).
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
    /usr/bin/python3.11 -S /src/third_party/python/pip_generate.py index "$store" "$lock" "$lock"

# Actions run as whatever user the engine picks; they only read the store.
WORKDIR /tmp
