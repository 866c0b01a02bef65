# One image for every orderflow role; docker-compose.yml picks the process per service.

FROM rust:1-bookworm AS build
WORKDIR /src
# No database at build time: the query macros read the query data committed in .sqlx/
# (SQLX_OFFLINE), and migrations are embedded from migrations/.
ENV SQLX_OFFLINE=true
# `.git` is not in the build context: pass the commit for --version and build info
# (`docker build --build-arg ORDERFLOW_GIT_SHA=$(git rev-parse --short=12 HEAD) .`).
ARG ORDERFLOW_GIT_SHA=unknown
ENV ORDERFLOW_GIT_SHA=$ORDERFLOW_GIT_SHA
COPY . .
RUN cargo build --release --locked -p orderflow --bins

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home orderflow
COPY --from=build \
    /src/target/release/orderflow \
    /src/target/release/order-worker \
    /src/target/release/outbox-relay \
    /src/target/release/sse-bridge \
    /usr/local/bin/
USER orderflow
CMD ["orderflow", "serve"]
