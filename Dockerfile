# The Plinth host with its plugins. Built by docker-compose.yml; usable on its own:
#   docker build -t plinth . && docker run -p 8080:8080 -e JWT_SECRET=... plinth
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
# scripts/ install the pinned toolchain's wasm32-wasip2 target themselves.
RUN BUILD_PLUGINS=deployed bash scripts/build-plugins.sh \
 && cargo build --release --locked -p plinth-host

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/plinth plinth \
 && install -d -o plinth -g plinth /var/lib/plinth/plugin-cache
COPY --from=build /src/target/release/plinth /usr/local/bin/plinth
# The API's plugins only: the example `hello` (an unauthenticated `/echo`) is for
# development and never ships. Add a production plugin here explicitly.
COPY --from=build /src/target/plugins/auth /srv/plinth/plugins/auth
COPY --from=build /src/target/plugins/users /srv/plinth/plugins/users
# The shipped operator policy: what each plugin may be granted (APP_ENV=production
# requires one; mount your own over it).
COPY --from=build /src/deploy/policy.toml /etc/plinth/policy.toml
ENV PLUGINS_DIR=/srv/plinth/plugins \
    PLUGINS_POLICY=/etc/plinth/policy.toml \
    PLUGIN_CACHE_DIR=/var/lib/plinth/plugin-cache \
    BIND_ADDR=0.0.0.0:8080 \
    LOG_FORMAT=json
WORKDIR /var/lib/plinth
USER plinth
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --retries=5 CMD curl -fsS http://127.0.0.1:8080/health || exit 1
CMD ["plinth"]
