# Build: the release binary, against the locked dependency versions.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml names the bench target; cargo refuses a manifest whose target file is missing.
COPY benches ./benches
COPY sql ./sql
COPY config ./config
RUN cargo build --release --locked --bin finsec

# Run: a slim image with the binary, its config files and nothing else.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 finsec \
    && mkdir -p /var/lib/finsec /etc/finsec/jwt-keys \
    && chown finsec /var/lib/finsec /etc/finsec/jwt-keys && chmod 700 /etc/finsec/jwt-keys
WORKDIR /app
COPY --from=build /src/target/release/finsec /usr/local/bin/finsec
COPY config ./config
USER finsec
ENV FINSEC_ENV=production
# The pending-revocation journal (revocations whose database write failed, kept until it lands):
# mount a volume of this instance's own here, so a restart finds it.
ENV FINSEC__DATABASE__PENDING_REVOCATIONS=/var/lib/finsec/pending-revocations.log
VOLUME /var/lib/finsec
# 5000: the API; 9100: metrics when FINSEC__METRICS__LISTEN=0.0.0.0:9100 (internal only).
EXPOSE 5000 9100
# Ready, not only alive: database answering, migrations applied, cluster lease held.
HEALTHCHECK --interval=10s --timeout=3s --retries=3 CMD curl -fsS http://127.0.0.1:5000/health/ready || exit 1
ENTRYPOINT ["finsec"]
CMD ["serve"]
